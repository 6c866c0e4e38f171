"""`kubetune plot` and `kubetune report`: from a real local run's folder and from a cluster (the emulator)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from kubetune import plots
from kubetune.api.models import Objective, Parameter
from kubetune.cli import main
from kubetune.report import StudyData, TrialData, load_folder

from conftest import study_manifest, write_manifest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STUDIES = "kubetune.io/v1alpha1/hyperparameterstudies"
TRIALS = "kubetune.io/v1alpha1/hyperparametertrials"
PARAMETERS = [
    {"name": "x", "type": "float", "min": -1.0, "max": 1.0},
    {"name": "lr", "type": "float", "min": 1e-4, "max": 1.0, "scale": "log"},
    {"name": "batch", "type": "int", "min": 16, "max": 128, "scale": "pow2"},
    {"name": "mode", "type": "categorical", "values": ["ok", "ok-too", "crash"]},
]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A real study run by `kubetune run`: 10 random trials of tests/trials/quadratic.py; the
    trials with mode=crash fail (seed 1 gives 6 succeeded and 4 failed)."""
    root = tmp_path_factory.mktemp("run")
    manifest = study_manifest(PARAMETERS, strategy={"name": "random", "seed": 1},
                              budget={"maxTrials": 10, "parallelTrials": 2, "maxFailedTrials": 10})
    assert main(["run", str(write_manifest(root / "study.yaml", manifest)), "-o", str(root / "out")]) == 0
    return root / "out"


@pytest.fixture
def folder(run_folder, tmp_path) -> Path:
    """A copy of the run's folder that a test may change."""
    return Path(shutil.copytree(run_folder, tmp_path / "quad"))


def pngs(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.png"))}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def add_trial(folder: Path, name: str, index: int, parameters: dict, status: dict, spec: dict | None = None,
              history: str | None = None) -> None:
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "HyperparameterTrial",
           "metadata": {"name": name, "labels": {"kubetune.io/study": "quad"}},
           "spec": {"study": "quad", "index": index, "parameters": parameters, **(spec or {})}, "status": status}
    write_json(folder / "trials" / name / "trial.json", doc)
    if history is not None:
        (folder / "trials" / name / "history.csv").write_text(history)


def check_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)


# -- plot -----------------------------------------------------------------------------------


def test_plot_writes_a_png_per_plot_and_prints_their_paths(run_folder, tmp_path, capsys):
    out = tmp_path / "plots"
    assert main(["plot", str(run_folder), "-o", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    files = pngs(out)
    assert set(files) == {"history.png", "parallel-coordinates.png", "importance.png", "intermediate.png"}
    assert sorted(printed) == sorted(str(out / name) for name in files)
    for content in files.values():
        assert content.startswith(PNG_SIGNATURE) and len(content) > 5000


def test_plot_defaults_to_a_plots_folder_inside_the_run(folder, capsys):
    assert main(["plot", str(folder)]) == 0
    assert "history.png" in pngs(folder / "plots")


def test_history_marks_failed_trials_and_follows_the_goal(run_folder):
    data = load_folder(run_folder)
    fig = plots.history_figure(data)
    (ax,) = fig.axes
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["succeeded trial", "best so far", "failed"]
    best_line = next(line for line in ax.get_lines() if line.get_label() == "best so far")
    ys = list(best_line.get_ydata())
    assert ys == sorted(ys, reverse=True)  # minimising: the best so far only goes down
    assert ys[-1] == pytest.approx(data.status["bestTrial"]["objective"])
    # Maximising the same metric: the best so far only goes up, and ends at the largest value.
    data.objective = Objective(metric="loss", goal="maximize")
    best_line = next(line for line in plots.history_figure(data).axes[0].get_lines() if line.get_label() == "best so far")
    ys = list(best_line.get_ydata())
    assert ys == sorted(ys) and ys[-1] == max(t.metrics["loss"] for t in data.trials if t.phase == "Succeeded")


def test_parallel_coordinates_has_one_axis_per_parameter_in_its_scale(run_folder):
    fig = plots.parallel_coordinates_figure(load_folder(run_folder))
    axes = {ax.get_label(): ax for ax in fig.axes if ax.get_label().startswith("parameter:")}
    assert list(axes) == [f"parameter:{p['name']}" for p in PARAMETERS]
    assert len(fig.axes) == len(PARAMETERS) + 2  # the host axes with the lines, and the colour bar
    assert axes["parameter:x"].get_yscale() == "linear" and axes["parameter:x"].get_ylim() == (-1.0, 1.0)
    assert axes["parameter:lr"].get_yscale() == "log"
    batch = axes["parameter:batch"]
    assert batch.get_yscale() == "log" and batch.yaxis.get_transform().base == 2
    assert [t.get_text() for t in batch.get_yticklabels()] == ["16", "32", "64", "128"]
    assert [t.get_text() for t in axes["parameter:mode"].get_yticklabels()] == ["ok", "ok-too", "crash"]
    host = next(ax for ax in fig.axes if ax.get_label() == "")
    assert len(host.get_lines()) == 10  # every trial: 6 coloured by objective, 4 failed ones dotted grey


def test_importance_ranks_the_parameter_that_matters_first():
    params = [Parameter(name="x", type="float", min=0.0, max=1.0),
              Parameter(name="noise", type="float", min=0.0, max=1.0),
              Parameter(name="choice", type="categorical", values=["a", "b"])]
    trials = []
    for i in range(40):
        x, noise = (i * 0.618) % 1, (i * 0.414 + 0.3) % 1
        trials.append(TrialData(f"t-{i}", i, {"x": x, "noise": noise, "choice": "ab"[i % 2]}, "Succeeded",
                                {"loss": (x - 0.4) ** 2}))
    data = StudyData("toy", "test", params, Objective(metric="loss"), {}, trials)
    scores = dict(plots.parameter_importance(data))
    assert list(scores) == ["x", "noise", "choice"] or list(scores)[0] == "x"
    assert scores["x"] > 0.8 and scores["noise"] < 0.1 and scores["choice"] < 0.1
    fig = plots.importance_figure(data)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "x"  # the top bar
    assert len(ax.patches) == 3
    assert "correlation ratio" in ax.get_title()


def test_importance_needs_five_succeeded_trials():
    params = [Parameter(name="x", type="float", min=0.0, max=1.0)]
    trials = [TrialData(f"t-{i}", i, {"x": i / 4}, "Succeeded", {"loss": i}) for i in range(4)]
    data = StudyData("toy", "test", params, Objective(metric="loss"), {}, trials)
    assert plots.parameter_importance(data) == [] and plots.importance_figure(data) is None


def test_pruned_trials_are_marked_on_the_history_and_the_intermediate_curves(folder):
    add_trial(folder, "quad-0010", 10, {"x": 0.9, "lr": 0.01, "batch": 32, "mode": "ok"},
              {"phase": "Pruned", "reason": "Diverged", "metrics": {"loss": 50.0}}, history="step,loss\n1,0.5\n2,50.0\n")
    data = load_folder(folder)
    history = plots.history_figure(data).axes[0]
    assert "pruned (last value)" in history.get_legend_handles_labels()[1]
    assert history.get_yscale() == "log"  # 50 next to losses near 0.4 spans two decades
    curves = plots.intermediate_figure(data).axes[0]
    labels = curves.get_legend_handles_labels()[1]
    assert "where a pruned trial stopped" in labels and "best trial quad-0004" in labels


# -- range test and stages ------------------------------------------------------------------


RANGE_CURVE = [{"lr": 1e-5 * 10 ** (k / 4), "loss": 2.3 - 0.08 * k if k < 16 else 1.0 + 3 * (k - 15)} for k in range(20)]


def add_range_test_and_stages(folder: Path, curve_in_status: bool = True) -> None:
    status = read_json(folder / "status.json")
    status["lrRangeTest"] = {"trial": "quad-0010", "parameter": "lr", "rule": "steepest", "learningRate": 0.003,
                             "message": "steepest descent of the smoothed loss at lr=0.003"}
    if curve_in_status:
        status["lrRangeTest"]["curve"] = RANGE_CURVE
    status["stages"] = [
        {"name": "learning-rate", "parameters": ["lr"], "strategy": "lr-range-test", "phase": "Succeeded",
         "maxTrials": 1, "trials": 1, "bestTrial": "quad-0010", "fixed": {"batch": 64}, "result": {"lr": 0.003}},
        {"name": "rest", "parameters": ["x", "batch", "mode"], "strategy": "random", "phase": "Running",
         "maxTrials": 10, "trials": 10, "bestTrial": "quad-0004", "bestObjective": 0.333, "fixed": {"lr": 0.003}},
    ]
    write_json(folder / "status.json", status)
    for path in folder.glob("trials/*/trial.json"):
        doc = read_json(path)
        doc["spec"]["stage"] = "rest"
        write_json(path, doc)
    history = "step,loss,lr\n" + "".join(f"{k + 1},{p['loss']},{p['lr']}\n" for k, p in enumerate(RANGE_CURVE))
    add_trial(folder, "quad-0010", 10, {"batch": 64, "x": 0.0, "mode": "ok"},
              {"phase": "Succeeded", "metrics": {"loss": 4.0, "lr": 0.003}},
              spec={"stage": "learning-rate",
                    "lrRangeTest": {"minLr": 1e-5, "maxLr": 1.0, "steps": 20, "beta": 0.9, "stopFactor": 4}},
              history=history)


@pytest.mark.parametrize("curve_in_status", [True, False], ids=["curve-in-status", "curve-from-trial-history"])
def test_range_test_curve_is_drawn_with_the_chosen_rate(folder, tmp_path, curve_in_status):
    add_range_test_and_stages(folder, curve_in_status)
    data = load_folder(folder)
    fig = plots.range_test_figure(data)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    loss_line, chosen = ax.get_lines()
    assert len(loss_line.get_xdata()) == len(RANGE_CURVE)
    assert list(chosen.get_xdata()) == [0.003, 0.003]
    assert chosen.get_label() == "chosen lr = 0.003 (steepest)"
    assert ax.get_ylim()[1] < 10  # the blow-up at the end is cut off, the dip stays readable
    # The range-test trial is not a configuration of the search: the other plots leave it out.
    history = plots.history_figure(data).axes[0]
    assert "10 trials" in history.get_title()
    assert [t.get_text() for t in history.texts] == ["stage rest"]  # the band over the stage's trials
    assert main(["plot", str(folder), "-o", str(tmp_path / "p")]) == 0
    assert "lr-range-test.png" in pngs(tmp_path / "p")


def test_report_shows_stages_and_the_range_test(folder):
    add_range_test_and_stages(folder)
    assert main(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    check_self_contained(page)
    stages = page[page.index("<h2>Stages</h2>"):page.index("<h2>Learning-rate range test</h2>")]
    assert "learning-rate" in stages and "lr-range-test" in stages and "batch=64" in stages
    assert "quad-0004 (0.333)" in stages and "10 of 10" in stages
    assert "steepest descent of the smoothed loss" in page
    trials = page[page.index("<h2>Trials</h2>"):]
    assert "<th>stage</th>" in trials
    assert re.search(r"<td>quad-0010</td><td>learning-rate</td>.*?<td>learning-rate range test</td></tr>", trials)
    assert page.count("<img ") == 5  # history, parallel coordinates, importance, intermediate, range test


def test_a_real_staged_study_shows_its_stages(tmp_path):
    """A staged study run by `kubetune run`: x is searched first, then lr and batch with x fixed."""
    manifest = study_manifest(PARAMETERS[:3], strategy={"name": "random", "seed": 1},
                              budget={"maxTrials": 10, "parallelTrials": 2},
                              stages=[{"name": "first", "parameters": ["x"], "maxTrials": 5},
                                      {"name": "second", "parameters": ["lr", "batch"]}])
    out = tmp_path / "staged"
    assert main(["run", str(write_manifest(tmp_path / "study.yaml", manifest)), "-o", str(out)]) == 0
    data = load_folder(out)
    history = plots.history_figure(data).axes[0]
    assert [t.get_text() for t in history.texts] == ["stage first", "stage second"]
    # Scored stage by stage: in the second stage x is fixed, so every trial there has the same loss
    # and neither lr nor batch explains anything; over all ten trials the stage itself would.
    scores = dict(plots.parameter_importance(data))
    assert list(scores)[0] == "x" and scores["x"] > 0.3 and scores["lr"] == scores["batch"] == 0.0
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    stages = page[page.index("<h2>Stages</h2>"):page.index("<h2>Parameter importance</h2>")]
    assert re.search(r"<td>first</td><td>Succeeded</td><td>x</td><td>random</td><td>5 of 5</td>", stages)
    assert re.search(r"<td>second</td><td>Succeeded</td><td>lr, batch</td>", stages)
    assert re.findall(r"<td>quad-\d+</td><td>(first|second)</td>", page) == ["first"] * 5 + ["second"] * 5


# -- report ---------------------------------------------------------------------------------


def test_report_is_one_self_contained_page(run_folder, tmp_path, capsys):
    out = tmp_path / "r" / "quad.html"
    assert main(["report", str(run_folder), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    check_self_contained(page)
    status = read_json(run_folder / "status.json")
    best = status["bestTrial"]["name"]
    assert f"<h3>Best trial: {best}</h3>" in page
    assert page.count("<img ") == 4
    assert "<h2>Stages</h2>" not in page and "range test" not in page.lower()
    assert "epsilon-squared" in page  # the importance method is stated
    rows = re.findall(r"<tr( class=\"best\")?><td class=\"num\">(\d+)</td><td>(quad-\d+)</td>", page)
    assert [(int(i), name) for _, i, name in rows] == [(i, f"quad-{i:04d}") for i in range(10)]
    assert [name for css, _, name in rows if css] == [best]
    assert page.count('class="phase-Failed">Failed<') == 4
    assert "exit code 1: something went wrong in the trainer" in page  # a failed trial's reason


def test_report_escapes_what_the_study_wrote(folder):
    path = folder / "trials" / "quad-0002" / "trial.json"
    doc = read_json(path)
    doc["status"]["message"] = "<script>alert('x')</script> & more"
    write_json(path, doc)
    assert main(["report", str(folder)]) == 0
    page = (folder / "report.html").read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script" not in page


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["plot", "report"])
def test_a_missing_folder_is_a_usage_error(command, tmp_path, capsys):
    assert main([command, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert f"kubetune {command}: {tmp_path / 'nope'}: no such folder" in err and "Traceback" not in err


def test_a_folder_that_is_no_run_and_conflicting_sources_are_usage_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a kubetune output folder: it has no study.yaml" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--study", "quad"]) == 2
    assert "either an output folder or --study NAME" in capsys.readouterr().err
    assert main(["plot"]) == 2
    assert "give a local run's output folder" in capsys.readouterr().err


def test_without_matplotlib_plot_says_what_to_install(run_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["plot", str(run_folder), "-o", str(tmp_path / "p")]) == 2
    assert "plots need matplotlib: pip install 'kubetune[plots]'" in capsys.readouterr().err


# -- from a cluster -------------------------------------------------------------------------


def publish(cluster, run_folder: Path, namespace: str) -> None:
    """Put the local run's study and trials into the API server, as the operator would have."""
    manifest = yaml.safe_load((run_folder / "study.yaml").read_text())
    cluster.create(manifest, namespace)
    cluster.patch_status(STUDIES, namespace, "quad", read_json(run_folder / "status.json"))
    for path in sorted(run_folder.glob("trials/*/trial.json")):
        doc = read_json(path)
        status = doc.pop("status")
        with (path.parent / "history.csv").open() as handle:
            status["intermediate"] = [{"step": int(row["step"]), "metrics": {"loss": float(row["loss"])}}
                                      for row in csv.DictReader(handle)]
        cluster.create(doc, namespace)
        cluster.patch_status(TRIALS, namespace, doc["metadata"]["name"], status)
    # Another study's trial in the same namespace must not show up.
    other = read_json(run_folder / "trials" / "quad-0000" / "trial.json")
    other["metadata"] = {"name": "other-0000", "labels": {"kubetune.io/study": "other"}}
    other["spec"]["study"] = "other"
    cluster.create(other, namespace)


def test_report_and_plot_read_a_study_from_the_cluster(cluster, run_folder, tmp_path, capsys):
    publish(cluster, run_folder, "ml")
    out = tmp_path / "cluster.html"
    assert main(["report", "--study", "quad", "-n", "ml", "--kubeconfig", str(cluster.kubeconfig),
                 "-o", str(out)]) == 0
    page = out.read_text()
    check_self_contained(page)
    assert "cluster study ml/quad" in page
    best = read_json(run_folder / "status.json")["bestTrial"]["name"]
    assert f"<h3>Best trial: {best}</h3>" in page
    assert page.count("<img ") == 4  # with intermediate values from status.intermediate
    assert re.findall(r"<td>(quad-\d+|other-\d+)</td>", page) == [f"quad-{i:04d}" for i in range(10)]

    assert main(["plot", "--study", "quad", "-n", "ml", "--context", "emulator", "--kubeconfig",
                 str(cluster.kubeconfig), "-o", str(tmp_path / "p")]) == 0
    assert len(pngs(tmp_path / "p")) == 4


def test_an_unknown_cluster_study_or_context_is_a_usage_error(cluster, capsys):
    assert main(["report", "--study", "nope", "--kubeconfig", str(cluster.kubeconfig)]) == 2
    assert "study default/nope not found" in capsys.readouterr().err  # the context's namespace
    assert main(["report", "--study", "nope", "--context", "prod", "--kubeconfig", str(cluster.kubeconfig)]) == 2
    assert "no context 'prod' in the kubeconfig; contexts: emulator" in capsys.readouterr().err
