"""`kubetune plot`: a study's plots as PNG files (matplotlib, Agg backend, no display needed).

    optimization history   the objective of each trial in index order and the best so far
    parallel coordinates   one vertical axis per parameter, one line per trial, coloured by objective
    parameter importance   how much of the objective's variation each parameter explains alone
    intermediate values    the objective metric each trial reported per step (pruned trials marked)
    lr range test          loss against learning rate from a range test, the chosen rate marked

Each `*_figure(data)` returns a matplotlib Figure, or None when the study has too little for
that plot (no succeeded trial, no intermediate reports, no range test). matplotlib is
imported inside the functions, so `import kubetune.cli` stays fast and the rest of kubetune
works without it; the optional extra `kubetune[plots]` installs it.

Trials that ran a learning-rate range test (their spec has `lrRangeTest`) appear only in the
range-test plot: they are not configurations of the search.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from kubetune.api.models import Parameter
    from kubetune.report import StudyData, TrialData

IMPORTANCE_METHOD = (
    "Importance is epsilon-squared (a bias-corrected correlation ratio): the share of the variance of "
    "the succeeded trials' objective ranks that each parameter explains on its own, with numeric "
    "parameters cut into equal-count bins (at least 4 trials each, at most 5 bins) and categorical ones grouped "
    "by choice; in a staged study, over the trials of the stage that searched the parameter. It is a "
    "first-order (main-effect) measure like fANOVA's, without interactions; near 0: no visible effect."
)
MIN_IMPORTANCE_TRIALS = 5
IMPORTANCE_BINS = 5
IMPORTANCE_BIN_SIZE = 4  # trials per bin at least, up to IMPORTANCE_BINS bins
ROUGH_IMPORTANCE_TRIALS = 20
# Colours: phases and the best trial, readable in print and for the common colour-vision deficiencies.
BEST_COLOUR = "#d62728"
FAILED_COLOUR = "#cf222e"
PRUNED_COLOUR = "#9a6700"
LINE_COLOUR = "#1f77b4"


class PlotsUnavailable(Exception):
    """matplotlib is not installed."""


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install 'kubetune[plots]'") from None
    matplotlib.use("Agg")  # files only; never open a window
    return matplotlib


def new_figure(width: float, height: float) -> "Figure":
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def png_bytes(fig: "Figure") -> bytes:
    buffer = io.BytesIO()
    # No Software metadata: the file carries no URL, and the same figure gives the same bytes.
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def save(fig: "Figure", path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))
    return path


# -- the data behind the plots (plain Python) -----------------------------------------------


def search_trials(data: "StudyData") -> list["TrialData"]:
    """The trials of the search itself: range-test trials left out."""
    return [t for t in data.trials if not t.spec.get("lrRangeTest")]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def unit_position(parameter: "Parameter", value: Any) -> Optional[float]:
    """Where a value sits on its parameter's axis, in [0, 1]: log scales in log space, each
    categorical choice at the centre of an equal slice. None for a value outside the space."""
    if parameter.type == "categorical":
        keys = [_key(v) for v in parameter.values]
        if _key(value) not in keys:
            return None
        return (keys.index(_key(value)) + 0.5) / len(keys)
    if not _finite(value):
        return None
    low, high, v = float(parameter.min), float(parameter.max), float(value)
    if parameter.scale in ("log", "pow2"):
        if v <= 0:
            return None
        low, high, v = math.log(low), math.log(high), math.log(v)
    return min(1.0, max(0.0, (v - low) / (high - low)))


def _key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, str(value))


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2  # ties share their mean rank
        i = j + 1
    return ranks


def _groups(parameter: "Parameter", values: Sequence[Any]) -> list[list[int]]:
    """Indices of the trials grouped by choice (categorical, or few distinct values) or by bin."""
    if parameter.type == "categorical":
        by: dict[tuple[str, str], list[int]] = {}
        for i, v in enumerate(values):
            if v is not None:
                by.setdefault(_key(v), []).append(i)
        return list(by.values())
    positions = [unit_position(parameter, v) for v in values]
    order = sorted((p, i) for i, p in enumerate(positions) if p is not None)
    distinct = sorted({p for p, _ in order})
    bins = max(2, min(IMPORTANCE_BINS, len(order) // IMPORTANCE_BIN_SIZE))
    if len(distinct) <= bins:
        return [[i for p, i in order if p == d] for d in distinct]
    groups: list[list[int]] = []
    size = len(order) / bins
    current: list[int] = []
    for n, (p, i) in enumerate(order):
        # Start a new bin at the size boundary, but never between two equal values.
        if current and n >= size * (len(groups) + 1) and p != order[n - 1][0]:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    return groups


def parameter_importance(data: "StudyData") -> list[tuple[str, float]]:
    """(parameter, epsilon-squared) from most to least important. See IMPORTANCE_METHOD.

    In a staged study each parameter is scored over the trials of the stages that searched it
    (elsewhere it was held fixed, and the other stages' differences would be credited to it).
    A parameter with fewer than 5 succeeded trials to score it over is left out."""
    done = [(t, y) for t in search_trials(data) if (y := data.objective_of(t)) is not None]
    searched_in = _stage_parameters(data)
    scores = []
    for p in data.parameters:
        mine = [(t, y) for t, y in done
                if not searched_in or t.spec.get("stage") not in searched_in or p.name in searched_in[t.spec["stage"]]]
        if len(mine) < MIN_IMPORTANCE_TRIALS:
            continue
        ranks = _ranks([y for _, y in mine])
        # Trials without a value for the parameter are left out.
        groups = [g for g in _groups(p, [t.parameters.get(p.name) for t, _ in mine]) if g]
        n, k = sum(len(g) for g in groups), len(groups)
        members = [i for g in groups for i in g]
        mean = sum(ranks[i] for i in members) / n if n else 0.0
        total = sum((ranks[i] - mean) ** 2 for i in members)
        score = 0.0
        if total > 0 and k > 1 and n > k:
            between = sum(len(g) * (sum(ranks[i] for i in g) / len(g) - mean) ** 2 for g in groups)
            within = total - between
            score = max(0.0, min(1.0, (between - (k - 1) * within / (n - k)) / total))
        scores.append((p.name, score))
    return sorted(scores, key=lambda s: -s[1])


def _stage_parameters(data: "StudyData") -> dict[str, set[str]]:
    """Stage name -> the parameters it searched, from status.stages (empty for unstaged studies)."""
    out = {}
    for stage in data.status.get("stages") or []:
        if isinstance(stage, Mapping) and stage.get("name") and isinstance(stage.get("parameters"), list):
            out[str(stage["name"])] = {str(p) for p in stage["parameters"]}
    return out


@dataclass
class RangeTest:
    points: list[tuple[float, float]]  # (learning rate, loss), in the order measured
    parameter: str
    chosen: Optional[float]
    rule: Optional[str]
    message: Optional[str]
    trial: Optional[str]


def range_test(data: "StudyData") -> Optional[RangeTest]:
    """The range-test curve: status.lrRangeTest.curve, else the history of the range-test trial."""
    lrt = data.status.get("lrRangeTest")
    lrt = lrt if isinstance(lrt, Mapping) else {}
    points = [(float(p["lr"]), float(p["loss"])) for p in lrt.get("curve") or []
              if isinstance(p, Mapping) and _finite(p.get("lr")) and p["lr"] > 0 and _finite(p.get("loss"))]
    trial_name = lrt.get("trial")
    if len(points) < 2:
        candidates = [t for t in data.trials if t.spec.get("lrRangeTest")]
        trial = next((t for t in candidates if t.name == trial_name), candidates[0] if candidates else None)
        if trial is not None:
            trial_name = trial.name
            points = [(m["lr"], m["loss"]) for _, m in trial.history
                      if _finite(m.get("lr")) and m["lr"] > 0 and _finite(m.get("loss"))]
    if len(points) < 2:
        return None
    chosen = lrt.get("learningRate")
    return RangeTest(points, str(lrt.get("parameter") or "learning rate"), float(chosen) if _finite(chosen) else None,
                     lrt.get("rule"), lrt.get("message"), trial_name)


def _wide(values: Sequence[float]) -> bool:
    """Positive values spanning more than two decades read better on a log axis."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


# -- figures --------------------------------------------------------------------------------


def history_figure(data: "StudyData") -> Optional["Figure"]:
    trials = search_trials(data)
    if not any(data.objective_of(t) is not None for t in trials):
        return None
    metric, minimize = data.objective.metric, data.minimize
    fig = new_figure(8, 4.5)
    ax = fig.add_subplot()
    ok = [(t.index, data.objective_of(t)) for t in trials if data.objective_of(t) is not None]
    ax.scatter([i for i, _ in ok], [y for _, y in ok], s=28, color=LINE_COLOUR, alpha=0.75, label="succeeded trial",
               zorder=3)
    best, steps = None, []
    for i, y in ok:
        if best is None or (y < best if minimize else y > best):
            best = y
        steps.append((i, best))
    last = max(t.index for t in trials)
    ax.step([i for i, _ in steps] + [last], [b for _, b in steps] + [steps[-1][1]], where="post",
            color=BEST_COLOUR, linewidth=2, label="best so far", zorder=4)
    values = [y for _, y in ok]
    pruned = [(t.index, t.value(metric)) for t in trials if t.phase == "Pruned" and t.value(metric) is not None]
    if pruned:
        ax.scatter([i for i, _ in pruned], [y for _, y in pruned], marker="x", s=40, color=PRUNED_COLOUR,
                   label="pruned (last value)", zorder=3)
        values += [y for _, y in pruned]
    if _wide(values):
        ax.set_yscale("log")
    # Trials without a value (failed, or pruned before reporting) sit on the bottom edge.
    blended = ax.get_xaxis_transform()
    for phase, colour, marker in (("Failed", FAILED_COLOUR, "v"), ("Pruned", PRUNED_COLOUR, "v")):
        missing = [t.index for t in trials if t.phase == phase and (phase == "Failed" or t.value(metric) is None)]
        if missing:
            ax.scatter(missing, [0.02] * len(missing), transform=blended, marker=marker, s=40, color=colour,
                       label="failed" if phase == "Failed" else "pruned (no value)", zorder=3, clip_on=False)
    _shade_stages(ax, trials)
    target = data.objective.target
    if target is not None:
        ax.axhline(target, color="#555", linestyle="--", linewidth=1, label=f"target {target:g}")
    ax.set_xlabel("trial index")
    ax.set_ylabel(f"{metric} ({'lower' if minimize else 'higher'} is better)")
    ax.set_title(f"Optimization history of {data.name}: {len(ok)} succeeded of {len(trials)} trials",
                 pad=18 if ax.texts else 6)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small", framealpha=0.9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def _shade_stages(ax, trials: Sequence["TrialData"]) -> None:
    """Staged studies: a band per stage over the trial indexes it ran, named at the top."""
    spans: dict[str, list[int]] = {}
    for t in trials:
        stage = t.spec.get("stage")
        if stage:
            spans.setdefault(str(stage), []).append(t.index)
    for n, (stage, indexes) in enumerate(spans.items()):
        low, high = min(indexes) - 0.5, max(indexes) + 0.5
        ax.axvspan(low, high, color="#888" if n % 2 else "#bbb", alpha=0.12, linewidth=0, zorder=0)
        # Named just above the frame, clear of the points; the title moves up to make room.
        ax.annotate(f"stage {stage}", ((low + high) / 2, 1), xycoords=ax.get_xaxis_transform(), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize="small", color="#444",
                    annotation_clip=False)


def parallel_coordinates_figure(data: "StudyData") -> Optional["Figure"]:
    """One axis per parameter (each in its own scale), one line per trial coloured by objective.

    The lines live in a host axes in [0, 1]; each parameter's axis is a zero-width Axes labelled
    `parameter:NAME` placed on the line's x position, with limits that map its values exactly
    where unit_position puts them."""
    import matplotlib
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

    trials = search_trials(data)
    scored = [(t, data.objective_of(t)) for t in trials]
    if not any(y is not None for _, y in scored):
        return None
    params = data.parameters
    k = len(params)
    xs = list(range(k)) if k > 1 else [0.5]
    fig = new_figure(max(7.0, 1.9 * k + 2.5), 5)
    left, bottom, width, height = 0.07, 0.14, 0.80, 0.70
    host = fig.add_axes((left, bottom, width, height))
    host.set_xlim(0, max(k - 1, 1))
    host.set_ylim(0, 1)
    host.yaxis.set_major_locator(NullLocator())
    host.set_xticks(xs, [p.name for p in params], fontsize="medium", fontweight="bold")
    host.tick_params(axis="x", length=0, pad=8)
    for side in ("left", "right", "top", "bottom"):
        host.spines[side].set_visible(False)

    values = [y for _, y in scored if y is not None]
    norm = LogNorm(min(values), max(values)) if _wide(values) else Normalize(min(values), max(values))
    if norm.vmin == norm.vmax:
        norm = Normalize(norm.vmin - 0.5, norm.vmax + 0.5)
    # Better is brighter (yellow): reversed viridis when minimising.
    cmap = matplotlib.colormaps["viridis_r" if data.minimize else "viridis"]

    def line(trial: "TrialData") -> Optional[list[float]]:
        """The line's heights; a gap (NaN) where the trial has no value for a parameter."""
        ys = [unit_position(p, trial.parameters.get(p.name)) for p in params]
        return None if all(y is None for y in ys) else [math.nan if y is None else y for y in ys]

    unscored = [t for t, y in scored if y is None and t.phase in ("Failed", "Pruned")]
    for t in unscored:
        ys = line(t)
        if ys:
            host.plot(xs, ys, color="#999", linewidth=1, linestyle=":", alpha=0.7, zorder=1)
    ranked = sorted(((t, y) for t, y in scored if y is not None), key=lambda ty: -ty[1] if data.minimize else ty[1])
    for n, (t, y) in enumerate(ranked):  # worst first, so the best are drawn on top
        ys = line(t)
        if ys:
            is_best = n == len(ranked) - 1
            host.plot(xs, ys, color=cmap(norm(y)), linewidth=3 if is_best else 1.4, alpha=1 if is_best else 0.8,
                      zorder=3 if is_best else 2, marker="o", markersize=3)

    for x, p in zip(xs, params):
        pos = left + width * (x / max(k - 1, 1))
        ax = fig.add_axes((pos, bottom, 1e-6, height), label=f"parameter:{p.name}")
        ax.patch.set_visible(False)
        for side in ("right", "top", "bottom"):
            ax.spines[side].set_visible(False)
        ax.xaxis.set_major_locator(NullLocator())
        ax.tick_params(axis="y", labelsize="small")
        if p.type == "categorical":
            ax.set_ylim(-0.5, len(p.values) - 0.5)
            ax.yaxis.set_major_locator(FixedLocator(list(range(len(p.values)))))
            ax.set_yticklabels([str(v) for v in p.values])
        elif p.scale == "pow2":
            ax.set_yscale("log", base=2)
            ax.set_ylim(p.min, p.max)
            ticks = [1 << e for e in range(int(p.min).bit_length() - 1, int(p.max).bit_length())]
            ax.yaxis.set_major_locator(FixedLocator(ticks))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.set_yticklabels([str(v) for v in ticks])
        elif p.scale == "log":
            ax.set_yscale("log")
            ax.set_ylim(p.min, p.max)
        else:
            ax.set_ylim(p.min, p.max)
            ax.yaxis.set_major_locator(MaxNLocator(6, integer=p.type == "int"))
        for label in ax.get_yticklabels():  # readable where lines cross the axis
            label.set_bbox(dict(facecolor="white", alpha=0.75, edgecolor="none", pad=0.5))
        scale = "" if p.type == "categorical" or p.scale == "linear" else f"({p.scale})"
        if scale:
            host.annotate(scale, (x, 0), xytext=(0, -26), textcoords="offset points", ha="center",
                          fontsize="small", color="#555", annotation_clip=False)

    cax = fig.add_axes((left + width + 0.04, bottom, 0.018, height), label="colorbar")
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, cax=cax, label=f"{data.objective.metric} ({'lower' if data.minimize else 'higher'} is better)")
    if data.minimize:
        cax.invert_yaxis()  # better at the top, as on every other plot
    failed_note = f"; dotted grey: {len(unscored)} failed or pruned" if unscored else ""
    host.set_title(f"Parallel coordinates of {data.name}: {len(ranked)} succeeded trials, the best drawn thickest"
                   f"{failed_note}", pad=12)
    return fig


def importance_figure(data: "StudyData") -> Optional["Figure"]:
    scores = parameter_importance(data)
    if not scores:
        return None
    fig = new_figure(8, 1.2 + 0.45 * len(scores))
    ax = fig.add_subplot()
    names = [n for n, _ in reversed(scores)]
    values = [s for _, s in reversed(scores)]
    bars = ax.barh(names, values, color=LINE_COLOUR)
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize="small")
    ax.set_xlim(0, max(1.0, max(values) * 1.15))
    ax.set_xlabel("share of the objective's rank variance explained by the parameter alone (ε²)")
    n = sum(1 for t in search_trials(data) if data.objective_of(t) is not None)
    rough = "; few trials: a rough estimate" if n < ROUGH_IMPORTANCE_TRIALS else ""
    if _stage_parameters(data):
        rough += "; each parameter over its own stage's trials"
    ax.set_title(f"Parameter importance of {data.name} ({n} succeeded trials{rough})\n"
                 "binned correlation ratio of the objective's ranks, ε²", fontsize="medium")
    ax.grid(axis="x", alpha=0.3)
    return fig


def intermediate_figure(data: "StudyData") -> Optional["Figure"]:
    metric = data.objective.metric
    curves = []
    for t in search_trials(data):
        points = [(step, m[metric]) for step, m in t.history if step is not None and _finite(m.get(metric))]
        if points:
            curves.append((t, points))
    if not any(len(points) > 1 for _, points in curves):
        return None
    best = data.status.get("bestTrial")
    best_name = best.get("name") if isinstance(best, Mapping) else None
    fig = new_figure(8, 4.5)
    ax = fig.add_subplot()
    labelled: set[str] = set()

    def label(text: str) -> Optional[str]:
        if text in labelled:
            return None
        labelled.add(text)
        return text

    for t, points in curves:
        steps, ys = [s for s, _ in points], [y for _, y in points]
        if t.name == best_name:
            ax.plot(steps, ys, color=BEST_COLOUR, linewidth=2.5, zorder=4, label=f"best trial {t.name}")
            continue
        colour = {"Pruned": PRUNED_COLOUR, "Failed": FAILED_COLOUR}.get(t.phase, LINE_COLOUR)
        ax.plot(steps, ys, color=colour, alpha=0.55, linewidth=1, zorder=2,
                linestyle="--" if t.phase == "Failed" else "-", label=label(t.phase.lower()))
        if t.phase in ("Pruned", "Failed"):
            ax.scatter(steps[-1:], ys[-1:], marker="x", color=colour, s=36, zorder=3,
                       label=label(f"where a {t.phase.lower()} trial stopped"))
    if _wide([y for _, points in curves for _, y in points]):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metric} ({'lower' if data.minimize else 'higher'} is better)")
    ax.set_title(f"Intermediate values of {data.name}: {metric} per step, {len(curves)} trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small", framealpha=0.9)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


def range_test_figure(data: "StudyData") -> Optional["Figure"]:
    rt = range_test(data)
    if rt is None:
        return None
    fig = new_figure(8, 4.5)
    ax = fig.add_subplot()
    lrs, losses = [lr for lr, _ in rt.points], [loss for _, loss in rt.points]
    ax.plot(lrs, losses, color=LINE_COLOUR, linewidth=1.8, marker=".", markersize=4, label="loss")
    ax.set_xscale("log")
    # A range test ends by blowing up; cut the plot a little above the starting loss so the dip stays readable.
    low, first = min(losses), losses[0]
    top = first + 0.5 * (first - low) if first > low else max(losses)
    if max(losses) > top:
        ax.set_ylim(low - 0.05 * (top - low), top)
        ax.annotate("higher losses cut off", (1, 1), xycoords="axes fraction", xytext=(-4, -4),
                    textcoords="offset points", ha="right", va="top", fontsize="small", color="#555")
    if rt.chosen is not None:
        rule = f" ({rt.rule})" if rt.rule else ""
        ax.axvline(rt.chosen, color=BEST_COLOUR, linestyle="--", linewidth=1.5,
                   label=f"chosen {rt.parameter} = {rt.chosen:.3g}{rule}")
    ax.set_xlabel(f"{rt.parameter} (log scale)")
    ax.set_ylabel("loss")
    source = f", trial {rt.trial}" if rt.trial else ""
    ax.set_title(f"Learning-rate range test of {data.name}{source}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="upper left")
    return fig


# -- all of them ----------------------------------------------------------------------------


@dataclass
class Plot:
    name: str  # file stem
    title: str
    caption: str
    figure: "Figure"


def study_figures(data: "StudyData") -> list[Plot]:
    """Every plot the study has data for, in reading order."""
    goal = "lowest" if data.minimize else "highest"
    makers = [
        ("history", "Optimization history", history_figure,
         f"The objective of every trial in the order they were created; the line is the {goal} value so far. "
         "Failed trials and trials pruned before reporting are marked on the bottom edge."),
        ("parallel-coordinates", "Parallel coordinates", parallel_coordinates_figure,
         "One vertical axis per parameter, in its own scale (log and pow2 axes are logarithmic, categorical "
         "choices are positions); each line is a trial, coloured by its objective."),
        ("importance", "Parameter importance", importance_figure, IMPORTANCE_METHOD),
        ("intermediate", "Intermediate values", intermediate_figure,
         "The objective metric each trial reported at each step; x marks where a pruned or failed trial stopped."),
        ("lr-range-test", "Learning-rate range test", range_test_figure,
         "Loss against learning rate while the rate grows during one short run; the dashed line is the rate "
         "the rule chose."),
    ]
    plots = []
    for name, title, make, caption in makers:
        fig = make(data)
        if fig is not None:
            plots.append(Plot(name, title, caption, fig))
    return plots


def write_plots(data: "StudyData", directory: Path) -> list[Path]:
    return [save(plot.figure, Path(directory) / f"{plot.name}.png") for plot in study_figures(data)]
