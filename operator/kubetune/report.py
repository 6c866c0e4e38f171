"""`kubetune report`: one self-contained HTML page for a study; and reading a study to report on.

A study is read from a local run's output folder (`load_folder`) or from a cluster
(`load_cluster`, through the kubeconfig) into a `StudyData`: the validated parameters and
objective, and the status and trials as the raw JSON the API stores. Status fields are read
defensively (`status.get(...)`), so a status written by an older or newer kubetune, with or
without `lrRangeTest` and `stages`, still makes a report.

The page embeds its plots as PNG data URIs and its CSS inline: no scripts, no external URLs,
so it opens offline and can be mailed or attached to a ticket as one file. Every string that
comes from the study (names, parameter values, messages) is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from kubetune.api.models import GROUP, VERSION, Objective, Parameter

STUDY_LABEL = "kubetune.io/study"  # the label the operator puts on a study's trials (cluster/builders.py)


class SourceError(Exception):
    """The study cannot be read: a missing folder, an unknown study, an unreachable cluster."""


@dataclass
class TrialData:
    name: str
    index: int
    parameters: dict[str, Any]
    phase: str
    metrics: dict[str, float]
    reason: Optional[str] = None
    message: Optional[str] = None
    #: Intermediate reports as (step, metrics), in step order.
    history: list[tuple[Optional[int], dict[str, float]]] = field(default_factory=list)
    #: The raw trial spec (for fields such as lrRangeTest that older models lack).
    spec: dict[str, Any] = field(default_factory=dict)

    def value(self, metric: str) -> Optional[float]:
        """The trial's latest finite value of a metric, whatever its phase."""
        value = self.metrics.get(metric)
        return value if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class StudyData:
    name: str
    source: str  # for people: "folder kubetune-runs/digits" or "cluster study ml/digits"
    parameters: list[Parameter]
    objective: Objective
    status: dict[str, Any]
    trials: list[TrialData]
    spec: dict[str, Any] = field(default_factory=dict)

    def objective_of(self, trial: TrialData) -> Optional[float]:
        """A trial's objective: the final metric of a Succeeded trial, if finite."""
        return trial.value(self.objective.metric) if trial.phase == "Succeeded" else None

    @property
    def minimize(self) -> bool:
        return self.objective.goal == "minimize"


# -- reading a study ------------------------------------------------------------------------


def _study_parts(manifest: Any, where: str) -> tuple[str, dict[str, Any], list[Parameter], Objective]:
    if not isinstance(manifest, Mapping) or not isinstance(manifest.get("spec"), Mapping):
        raise SourceError(f"{where} is not a HyperparameterStudy")
    spec = dict(manifest["spec"])
    try:
        parameters = [Parameter.model_validate(p) for p in spec.get("parameters") or []]
        objective = Objective.model_validate(spec.get("objective"))
    except ValueError as exc:
        raise SourceError(f"{where}: the study's parameters or objective are invalid: {exc}") from None
    if not parameters:
        raise SourceError(f"{where}: the study has no parameters")
    name = str((manifest.get("metadata") or {}).get("name") or "study")
    return name, spec, parameters, objective


def _trial_data(doc: Mapping[str, Any], history: list[tuple[Optional[int], dict[str, float]]]) -> TrialData:
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    return TrialData(
        name=str((doc.get("metadata") or {}).get("name", "")),
        index=int(spec.get("index", 0)),
        parameters=dict(spec.get("parameters") or {}),
        phase=str(status.get("phase", "Pending")),
        metrics={k: float(v) for k, v in (status.get("metrics") or {}).items() if isinstance(v, (int, float))},
        reason=status.get("reason"),
        message=status.get("message"),
        history=history,
        spec=dict(spec),
    )


def _read_history_csv(path: Path) -> list[tuple[Optional[int], dict[str, float]]]:
    if not path.exists():
        return []
    reports = []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            step = row.pop("step", "")
            reports.append((int(step) if step else None, {k: float(v) for k, v in row.items() if v not in ("", None)}))
    return reports


def load_folder(root: Path) -> StudyData:
    """A local run's output folder (kubetune run -o ROOT)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: no such folder (give a local run's output folder, e.g. kubetune-runs/STUDY)")
    manifest_path = root / "study.yaml"
    if not manifest_path.exists():
        raise SourceError(f"{root} is not a kubetune output folder: it has no study.yaml")
    try:
        manifest = yaml.safe_load(manifest_path.read_text())
        status_path = root / "status.json"
        status = json.loads(status_path.read_text()) if status_path.exists() else {}
        trials = []
        for path in sorted((root / "trials").glob("*/trial.json")):
            trials.append(_trial_data(json.loads(path.read_text()), _read_history_csv(path.parent / "history.csv")))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SourceError(f"{root}: cannot read the study: {exc}") from None
    name, spec, parameters, objective = _study_parts(manifest, str(manifest_path))
    return StudyData(name, f"folder {root}", parameters, objective, status if isinstance(status, dict) else {},
                     sorted(trials, key=lambda t: t.index), spec)


def load_cluster(name: str, namespace: Optional[str] = None, context: Optional[str] = None,
                 kubeconfig: Optional[str] = None) -> StudyData:
    """A HyperparameterStudy and its trials, read with the kubeconfig's credentials."""
    try:
        import kubernetes
        from kubernetes.client.exceptions import ApiException
    except ImportError:
        raise SourceError("reading a study from a cluster needs the Kubernetes client: pip install 'kubetune[cluster]'") from None
    try:
        contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)
        if context is not None:
            active = next((c for c in contexts if c["name"] == context), None)
            if active is None:
                raise SourceError(f"no context {context!r} in the kubeconfig; contexts: {', '.join(c['name'] for c in contexts)}")
        namespace = namespace or (active or {}).get("context", {}).get("namespace") or "default"
        api_client = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)
    except kubernetes.config.ConfigException as exc:
        raise SourceError(f"cannot load the kubeconfig{' ' + kubeconfig if kubeconfig else ''}: {exc}") from None
    where = f"study {namespace}/{name}"
    try:
        custom = kubernetes.client.CustomObjectsApi(api_client)
        study = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "hyperparameterstudies", name)
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "hyperparametertrials",
                                                      label_selector=f"{STUDY_LABEL}={name}")
    except ApiException as exc:
        if exc.status == 404:
            raise SourceError(f"{where} not found (is the namespace right? -n NAMESPACE)") from None
        raise SourceError(f"cannot read {where}: {exc.status} {exc.reason}") from None
    except Exception as exc:  # urllib3 connection errors and the like
        raise SourceError(f"cannot reach the cluster to read {where}: {exc}") from None
    finally:
        api_client.close()
    trials = []
    for doc in listed.get("items", []):
        intermediate = (doc.get("status") or {}).get("intermediate") or []
        history = [(r.get("step"), dict(r.get("metrics") or {})) for r in intermediate if isinstance(r, Mapping)]
        trials.append(_trial_data(doc, history))
    name, spec, parameters, objective = _study_parts(study, where)
    return StudyData(name, f"cluster {where}", parameters, objective, study.get("status") or {},
                     sorted(trials, key=lambda t: t.index), spec)


# -- the page -------------------------------------------------------------------------------


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.muted { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff7d6; font-weight: 600; }
.phase-Succeeded { color: #1a7f37; } .phase-Failed { color: #cf222e; } .phase-Pruned { color: #9a6700; }
.phase-Stopped, .phase-Pending, .phase-Running { color: #57606a; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number short enough for a table cell; anything else as text."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


@dataclass
class Cell:
    """A table cell with a CSS class (plain values get none, numbers get "num")."""

    value: Any
    css: str = ""


def _td(value: Any) -> str:
    cell = value if isinstance(value, Cell) else Cell(value, "num" if isinstance(value, (int, float))
                                                        and not isinstance(value, bool) else "")
    css = f' class="{_e(cell.css)}"' if cell.css else ""
    return f"<td{css}>{_e(fmt(cell.value))}</td>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], row_classes: Sequence[str] = ()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(_td(c) for c in row)
        css = row_classes[i] if i < len(row_classes) else ""
        body.append(f'<tr class="{_e(css)}">{cells}</tr>' if css else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _facts(rows: Sequence[tuple[str, Any]]) -> str:
    """A two-column table of labelled values."""
    body = "".join(f'<tr><th scope="row">{_e(label)}</th>{_td(value)}</tr>' for label, value in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _pairs(mapping: Any) -> str:
    if not isinstance(mapping, Mapping):
        return "" if mapping is None else str(mapping)
    return ", ".join(f"{k}={fmt(v)}" for k, v in mapping.items())


def _best_name(best: Any) -> str:
    if isinstance(best, Mapping):
        return str(best.get("name", ""))
    return "" if best is None else str(best)


def _summary(data: StudyData) -> str:
    status = data.status
    counts = status.get("trials") or {}
    strategy = status.get("strategy") or {}
    spec_strategy = data.spec.get("strategy") or {}
    name = strategy.get("name") or spec_strategy.get("name") or "auto"
    strategy_text = str(name)
    if strategy.get("chosen"):
        strategy_text += f" → {strategy['chosen']}"
    if strategy.get("seed") is not None:
        strategy_text += f" (seed {strategy['seed']})"
    rows: list[tuple[str, Any]] = [
        ("phase", status.get("phase", "unknown (no status yet)")),
        ("objective", f"{data.objective.goal} {data.objective.metric}"
                      + (f", target {fmt(data.objective.target)}" if data.objective.target is not None else "")),
        ("strategy", strategy_text),
    ]
    if strategy.get("reason"):
        rows.append(("why this strategy", strategy["reason"]))
    if counts:
        rows.append(("trials", ", ".join(f"{counts.get(k, 0)} {k}" for k in
                                        ("total", "succeeded", "failed", "pruned", "stopped", "running", "pending"))))
    else:
        rows.append(("trials", f"{len(data.trials)} found"))
    for key, label in (("startTime", "started"), ("completionTime", "finished")):
        if status.get(key):
            rows.append((label, status[key]))
    out = [_facts(rows)]
    best = status.get("bestTrial")
    if isinstance(best, Mapping) and best.get("name"):
        out.append(f"<h3>Best trial: {_e(best['name'])}</h3>")
        out.append(f"<p>{_e(data.objective.metric)} = <b>{_e(fmt(best.get('objective')))}</b></p>")
        params = best.get("parameters") or {}
        out.append(_table(["parameter", "value"], [(k, v) for k, v in params.items()]))
        metrics = best.get("metrics") or {}
        if metrics:
            out.append(f"<p class=\"muted\">metrics: {_e(_pairs(metrics))}</p>")
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, Mapping)]
    if conditions:
        out.append("<h3>Conditions</h3>")
        out.append(_table(["type", "status", "reason", "message", "since"],
                          [(c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", ""),
                            c.get("lastTransitionTime", "")) for c in conditions]))
    return "\n".join(out)


def _stages(data: StudyData) -> str:
    stages = [s for s in data.status.get("stages") or [] if isinstance(s, Mapping)]
    if not stages:
        return ""
    rows = []
    for s in stages:
        trials = s.get("trials")
        if isinstance(trials, (list, tuple)):
            trials = len(trials)
        if s.get("maxTrials") is not None:
            trials = f"{'' if trials is None else trials} of {s['maxTrials']}"
        parameters = s.get("parameters")
        if isinstance(parameters, (list, tuple)):
            parameters = ", ".join(str(p.get("name", p)) if isinstance(p, Mapping) else str(p) for p in parameters)
        best = _best_name(s.get("bestTrial"))
        if best and s.get("bestObjective") is not None:
            best = f"{best} ({fmt(s['bestObjective'])})"
        rows.append((s.get("name", ""), s.get("phase", ""), parameters or "", s.get("strategy", ""),
                     "" if trials is None else trials, best, _pairs(s.get("fixed") or {}),
                     _pairs(s.get("result") or {}), s.get("message", "")))
    return "<h2>Stages</h2>\n" + _table(
        ["stage", "phase", "parameters", "strategy", "trials", "best trial", "fixed", "result", "message"], rows)


def _range_test(data: StudyData) -> str:
    lrt = data.status.get("lrRangeTest")
    if not isinstance(lrt, Mapping):
        return ""
    rows = [(label, lrt[key]) for key, label in (("trial", "trial"), ("parameter", "parameter"), ("rule", "rule"),
                                                 ("learningRate", "chosen learning rate"), ("message", "message"))
            if lrt.get(key) is not None]
    curve = lrt.get("curve")
    if isinstance(curve, list):
        rows.append(("points on the curve", len(curve)))
    return "<h2>Learning-rate range test</h2>\n" + _facts(rows)


def _importance(data: StudyData) -> str:
    from kubetune.plots import IMPORTANCE_METHOD, parameter_importance

    scores = parameter_importance(data)
    if not scores:
        return ""
    rows = [(name, Cell(f"{score:.2f}", "num")) for name, score in scores]
    return ("<h2>Parameter importance</h2>\n" + _table(["parameter", "importance"], rows)
            + f"<p class=\"muted\">{_e(IMPORTANCE_METHOD)}</p>")


def _trials(data: StudyData) -> str:
    names = [p.name for p in data.parameters]
    best = _best_name(data.status.get("bestTrial"))
    staged = any(t.spec.get("stage") for t in data.trials)
    rows, classes = [], []
    for t in data.trials:
        objective = data.objective_of(t)
        shown = objective if objective is not None else t.value(data.objective.metric)
        reason = t.reason or ""
        if t.message and t.phase in ("Failed", "Pruned", "Stopped"):
            reason = f"{reason}: {t.message}" if reason else t.message
        stage = (str(t.spec.get("stage") or ""),) if staged else ()
        if t.spec.get("lrRangeTest"):
            reason = "learning-rate range test" + (f"; {reason}" if reason else "")
        rows.append((t.index, t.name, *stage, Cell(t.phase, f"phase-{t.phase}"),
                     *(t.parameters.get(n, "") for n in names), "" if shown is None else shown, reason))
        classes.append("best" if t.name == best else "")
    headers = ["#", "trial", *(["stage"] if staged else []), "phase", *names, data.objective.metric, "reason"]
    table = _table(headers, rows, row_classes=classes)
    return f"<h2>Trials</h2>\n<p class=\"muted\">{_e(data.objective.metric)} of a trial that did not succeed is its last reported value.</p>\n{table}"


def render_html(data: StudyData, images: Sequence[tuple[str, str, bytes]]) -> str:
    """The page; images are (title, caption, PNG bytes)."""
    figures = []
    for title, caption, png in images:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        figures.append(f'<figure><img alt="{_e(title)}" src="{uri}"><figcaption><b>{_e(title)}.</b> '
                       f"{_e(caption)}</figcaption></figure>")
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kubetune study {_e(data.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Study {_e(data.name)}</h1>",
        f'<p class="muted">{_e(data.source)}; report generated {_e(generated)} by kubetune report</p>',
        "<h2>Summary</h2>", _summary(data),
        _stages(data), _range_test(data), _importance(data),
        "<h2>Plots</h2>" if figures else "", *figures,
        _trials(data),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_report(data: StudyData, path: Path) -> Path:
    from kubetune import plots

    images = [(plot.title, plot.caption, plots.png_bytes(plot.figure)) for plot in plots.study_figures(data)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data, images), encoding="utf-8")
    return path
