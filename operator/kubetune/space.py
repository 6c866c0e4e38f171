"""Search-space arithmetic: sampling, grids and the unit-cube encoding of parameters.

Pure functions over `Parameter` models; strategies build on these so that every strategy
treats scales the same way (log-uniform rates, powers of two for pow2, steps respected).
"""

from __future__ import annotations

import math
import random
from typing import Any, Optional, Sequence

from kubetune.api.models import Parameter


def sample(parameter: Parameter, rng: random.Random) -> Any:
    """Draw one value: log-uniform on log scales, uniform otherwise, every choice equally likely."""
    if parameter.type == "categorical":
        return rng.choice(parameter.values)
    if parameter.scale == "pow2":
        low, high = int(parameter.min).bit_length() - 1, int(parameter.max).bit_length() - 1
        return 1 << rng.randint(low, high)
    if parameter.step is not None or (parameter.type == "int" and parameter.scale == "linear"):
        values = discrete_values(parameter)
        return values[rng.randrange(len(values))]
    if parameter.scale == "log":
        if parameter.type == "int":
            # Each integer k gets the log-space mass of [k - 0.5, k + 0.5], as Optuna does.
            low, high = math.log(parameter.min - 0.5), math.log(parameter.max + 0.5)
            return _clip(round(math.exp(rng.uniform(low, high))), parameter)
        return _clip(math.exp(rng.uniform(math.log(parameter.min), math.log(parameter.max))), parameter)
    return rng.uniform(float(parameter.min), float(parameter.max))


def _clip(value: Any, parameter: Parameter) -> Any:
    return min(max(value, parameter.min), parameter.max)


def discrete_values(parameter: Parameter) -> Optional[list[Any]]:
    """Every allowed value when the parameter is finite, else None (a continuous float)."""
    if parameter.type == "categorical":
        return list(parameter.values)
    if parameter.scale == "pow2":
        low, high = int(parameter.min).bit_length() - 1, int(parameter.max).bit_length() - 1
        return [1 << k for k in range(low, high + 1)]
    if parameter.type == "int":
        step = int(parameter.step or 1)
        return list(range(int(parameter.min), int(parameter.max) + 1, step))
    if parameter.step is not None:
        count = int(math.floor((parameter.max - parameter.min) / parameter.step + 1e-9)) + 1
        return [_round_to_step(parameter.min + k * parameter.step, parameter.step) for k in range(count)]
    return None


def _round_to_step(value: float, step: float) -> float:
    # 0.1 * 3 is 0.30000000000000004; show users the value they meant.
    decimals = max(0, -math.floor(math.log10(step)) + 6)
    return round(value, decimals)


def grid_values(parameter: Parameter, resolution: Optional[int]) -> Optional[list[Any]]:
    """Values of a parameter on a grid; None when it is continuous and no resolution is set.

    With a resolution, continuous floats get that many points (evenly spaced in log space on
    a log scale); discrete parameters with more values than the resolution are thinned the
    same way.
    """
    values = discrete_values(parameter)
    if values is not None and (resolution is None or len(values) <= resolution or parameter.type == "categorical"):
        return values
    if resolution is None:
        return None
    if resolution == 1:
        points = [_unit_to_value(parameter, 0.5)]
    else:
        points = [_unit_to_value(parameter, k / (resolution - 1)) for k in range(resolution)]
    if values is not None:
        points = [_nearest(values, p) for p in points]
    unique: list[Any] = []
    for p in points:
        if p not in unique:
            unique.append(p)
    return unique


def _nearest(values: Sequence[Any], target: float) -> Any:
    return min(values, key=lambda v: abs(v - target))


def _unit_to_value(parameter: Parameter, u: float) -> float:
    if parameter.scale in ("log", "pow2"):
        low, high = math.log(parameter.min), math.log(parameter.max)
        value = math.exp(low + u * (high - low))
    else:
        value = parameter.min + u * (parameter.max - parameter.min)
    value = min(max(value, parameter.min), parameter.max)
    # exp(log(x)) drifts in the last bits (1e-4 -> 0.00010000000000000009); 12 digits is plenty.
    return round(value) if parameter.type == "int" else float(f"{value:.12g}")


def format_value(value: Any) -> str:
    """How a parameter value appears in command lines and environment variables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    return str(value)


def default_value(parameter: Parameter) -> Any:
    """The value a parameter takes while it is not searched: its default, else the middle of
    its range (the geometric middle on log and pow2 scales) or its first value."""
    if parameter.default is not None:
        return parameter.default
    if parameter.type == "categorical":
        return parameter.values[0]
    values = discrete_values(parameter)
    if values is not None and parameter.scale == "pow2":
        return values[(len(values) - 1) // 2]
    middle = _unit_to_value(parameter, 0.5)
    return _nearest(values, middle) if values is not None else middle
