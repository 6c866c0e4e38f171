"""Tuning advice: a valid study that goes against what practitioners teach.

Validation refuses what cannot work; advice points at what works badly. A learning rate
searched on a linear scale over four orders of magnitude is valid, but nine trials in ten
then land in its top decade. The advice names the field and the fix. The CLI prints it
(`kubetune validate`, `kubetune run`), and the operator posts it once as `TuningAdvice`
events when it first sees a study. It never blocks anything.

Pure: a function of the spec, like the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubetune.api.models import HyperparameterStudy, Parameter

#: A range whose max/min is at least this is "several orders of magnitude": log-uniform territory.
WIDE_RATIO = 100.0
#: Past this many searched parameters random search beats a grid (the practitioner's "more than 2-3").
GRID_PARAMETERS = 3


@dataclass(frozen=True)
class Advice:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def advise(study: HyperparameterStudy) -> list[Advice]:
    """Advice on the study's spec, in the order of its fields."""
    found: list[Advice] = []
    parameters = study.spec.parameters
    for i, parameter in enumerate(parameters):
        found.extend(_parameter_advice(f"spec.parameters[{i}]", parameter))
    searched = [p for p in parameters if p.type != "categorical" or len(p.values or []) > 1]
    if study.spec.strategy.name == "grid" and len(searched) > GRID_PARAMETERS:
        found.append(Advice("spec.strategy.name", (
            f"a grid over {len(searched)} parameters tries each at only a few values, so the one that matters most "
            f"gets few distinct values however many trials run. Random search gives every trial a new value of every "
            f"parameter: use auto, bayesian or random, and a grid for up to {GRID_PARAMETERS} parameters.")))
    return found


def _parameter_advice(field: str, p: Parameter) -> list[Advice]:
    role = p.effective_role
    rate = {"learningRate": "learning rates", "regularization": "regularisation strengths"}.get(role)
    if p.type == "float" and p.scale == "linear" and rate is not None and p.min is not None and p.max is not None:
        if p.min > 0 and p.max / p.min >= WIDE_RATIO:
            decades = math.log10(p.max / p.min)
            return [Advice(f"{field}.scale", (
                f"{p.name} spans {decades:.0f} orders of magnitude on a linear scale, so "
                f"{_top_decade_share(p.min, p.max):.0%} of the trials land in its top decade. Use scale: log "
                f"(log-uniform), the usual choice for {rate}."))]
        if p.min == 0 and role == "learningRate" and p.max > 0:
            return [Advice(f"{field}.min", (
                f"{p.name} starts at 0 on a linear scale: a learning rate of 0 trains nothing, and the small rates "
                f"that often work best are almost never drawn. Use a positive min (for example {p.max / 1e4:g}) "
                f"and scale: log."))]
    if p.type == "int" and role == "batchSize" and p.scale != "pow2" and p.min is not None and p.max is not None:
        powers = [1 << k for k in range(0, 31) if p.min <= (1 << k) <= p.max]
        if len(powers) >= 2:
            return [Advice(f"{field}.scale", (
                f"{p.name} is a batch size searched over every integer from {p.min:g} to {p.max:g}. Use scale: pow2 "
                f"({', '.join(str(v) for v in powers)}): powers of two fill GPU kernels evenly, and neighbouring "
                f"batch sizes train alike, so trials spent between them buy little."))]
    return []


def _top_decade_share(low: float, high: float) -> float:
    """The share of a uniform draw on [low, high] that lands in [high / 10, high]."""
    return (high - max(low, high / 10)) / (high - low)
