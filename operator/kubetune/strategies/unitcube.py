"""The unit cube that quasi-random and model-based strategies search in.

Every parameter becomes one coordinate in [0, 1), spread the way `space.sample` spreads
values: log scales in log space, pow2 as the exponent, and each allowed value of a finite
parameter (ints, steps, powers of two, categorical choices) owning an equal slice of the
interval. A point of the cube therefore always decodes to a valid configuration, and a
uniform or Sobol point decodes to the same distribution random search draws from.

`Coordinate.encode` maps a value back to the centre of its slice, so decoding an encoded
value gives the value again, and `snap` maps any coordinate to the encoding of what it
decodes to; models compare candidates through snapped coordinates, exactly as they will be
observed. Only plain Python and math here: torch stays out of the import path.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from kubetune import space
from kubetune.api.models import Parameter

#: Keeps floor(u * n) below n when a coordinate reaches 1.
_BELOW_ONE = 1.0 - 1e-12


class Coordinate:
    """One parameter's coordinate: `count` equal slices when finite, continuous otherwise."""

    def __init__(self, parameter: Parameter) -> None:
        self.parameter = parameter
        self.categorical = parameter.type == "categorical"
        #: Number of allowed values, or None for a continuous coordinate.
        self.count: Optional[int] = None
        self._values: Optional[list[Any]] = None
        self._pow2_low = 0
        self._int_step = 1
        # For continuous coordinates: the interval the cube is stretched over (log space on log scales).
        self.low = self.high = 0.0
        p = parameter
        if p.type == "categorical":
            self._values = list(p.values)
            self.count = len(self._values)
        elif p.scale == "pow2":
            self._pow2_low = int(p.min).bit_length() - 1
            self.count = int(p.max).bit_length() - 1 - self._pow2_low + 1
        elif p.type == "int" and p.scale == "linear":
            self._int_step = int(p.step or 1)
            self.count = (int(p.max) - int(p.min)) // self._int_step + 1
        elif p.step is not None:
            self._values = space.discrete_values(p)
            self.count = len(self._values)
        elif p.scale == "log":
            # Log ints: each integer k owns the log-space mass of [k - 0.5, k + 0.5], as in space.sample.
            pad = 0.5 if p.type == "int" else 0.0
            self.low, self.high = math.log(p.min - pad), math.log(p.max + pad)
        else:
            self.low, self.high = float(p.min), float(p.max)

    def value_at(self, position: int) -> Any:
        """The allowed value in slice `position` of a finite coordinate."""
        p = self.parameter
        if self._values is not None:
            return self._values[position]
        if p.scale == "pow2":
            return 1 << (self._pow2_low + position)
        return int(p.min) + position * self._int_step

    def position_of(self, value: Any) -> int:
        """The slice of a finite coordinate holding `value` (the nearest one for a number off the grid)."""
        p = self.parameter
        if self.categorical:
            # True == 1 in Python, so booleans match only booleans; 2 and 2.0 are the same choice.
            for position, choice in enumerate(self._values):
                if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                    return position
            raise ValueError(f"{value!r} is not one of {p.name}'s values")
        if p.scale == "pow2":
            position = round(math.log2(max(float(value), 1.0))) - self._pow2_low
        elif self._values is not None:
            position = round((float(value) - p.min) / p.step)
        else:
            position = round((float(value) - p.min) / self._int_step)
        return min(max(position, 0), self.count - 1)

    def decode(self, u: float) -> Any:
        """The parameter value at coordinate u in [0, 1]."""
        p = self.parameter
        if self.count is not None:
            return self.value_at(min(int(u * self.count), self.count - 1))
        x = self.low + min(max(u, 0.0), 1.0) * (self.high - self.low)
        if p.scale == "log":
            x = math.exp(x)
        if p.type == "int":
            return int(min(max(round(x), p.min), p.max))
        # Ten significant digits: 0.001 rather than 0.0010000000000000002 on command lines.
        return float(min(max(float(f"{x:.10g}"), p.min), p.max))

    def encode(self, value: Any) -> float:
        """The coordinate of `value`: the centre of its slice, or its place on the interval."""
        p = self.parameter
        if self.count is not None:
            return (self.position_of(value) + 0.5) / self.count
        x = math.log(max(float(value), 1e-300)) if p.scale == "log" else float(value)
        return min(max((x - self.low) / (self.high - self.low), 0.0), _BELOW_ONE)


class UnitCube:
    """The search space as [0, 1)^d, one coordinate per parameter in spec order."""

    def __init__(self, parameters: Sequence[Parameter]) -> None:
        self.coordinates = [Coordinate(p) for p in parameters]

    @property
    def dimension(self) -> int:
        return len(self.coordinates)

    def decode(self, point: Sequence[float]) -> dict[str, Any]:
        return {c.parameter.name: c.decode(float(u)) for c, u in zip(self.coordinates, point)}

    def encode(self, parameters: dict[str, Any]) -> Optional[list[float]]:
        """The point of a configuration, or None when it does not fit this space (a missing or foreign value)."""
        try:
            return [c.encode(parameters[c.parameter.name]) for c in self.coordinates]
        except (KeyError, ValueError, TypeError):
            return None


def sobol_points(dimension: int, seed: int, start: int, count: int):
    """Points start..start+count-1 of the scrambled Sobol sequence for `seed`, as a float64 tensor.

    Scrambling makes different seeds give different designs while keeping the balance of the
    sequence: every prefix of 2^k points puts exactly one point in each of 2^k elementary
    boxes, so the first few trials already cover every region of the space evenly.
    """
    import torch
    from torch.quasirandom import SobolEngine

    engine = SobolEngine(dimension, scramble=True, seed=seed)
    if start:
        engine.fast_forward(start)
    return engine.draw(count, dtype=torch.float64)
