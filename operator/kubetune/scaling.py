"""The batch-size learning-rate scaling rules (spec.lrScaling).

When the batch size grows k-fold, the gradient noise shrinks and the learning rate can grow
with it: k-fold under the linear rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD"),
sqrt(k)-fold under the square-root rule (Krizhevsky 2014; Hoffer et al. 2017), which suits
adaptive optimisers better. The search works on the raw learning rate, the value at
baseBatchSize; each trial runs with the rate scaled to its own batch size, so a good raw
value stays good whatever batch size it is paired with.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

from kubetune.api.models import HyperparameterStudy, LrScaling, StudySpec


class ScalingError(ValueError):
    """spec.lrScaling cannot be applied; `path` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def factor(rule: str, batch_size: float, base_batch_size: float) -> float:
    """How much the learning rate is multiplied by at `batch_size`."""
    ratio = batch_size / base_batch_size
    return ratio if rule == "linear" else math.sqrt(ratio)


def role_parameter(spec: StudySpec, role: str, kinds: tuple[str, ...]) -> Optional[str]:
    """The one parameter of `role` (explicit or guessed from its name) of one of `kinds`."""
    found = [p.name for p in spec.parameters if p.effective_role == role and p.type in kinds]
    return found[0] if len(found) == 1 else None


def resolve(spec: StudySpec) -> Optional[tuple[LrScaling, str, str]]:
    """(settings, learning-rate parameter, batch-size parameter), or None without lrScaling.

    Raises ScalingError when the parameters cannot be found or have the wrong type.
    """
    scaling = spec.lr_scaling
    if scaling is None:
        return None
    names = {p.name for p in spec.parameters}
    lr = scaling.lr_parameter or role_parameter(spec, "learningRate", ("float",))
    if lr is None:
        raise ScalingError("spec.lrScaling.lrParameter", "name the learning-rate parameter to scale (no single float parameter has role learningRate)")
    if lr not in names:
        raise ScalingError("spec.lrScaling.lrParameter", f"{lr!r} is not a parameter; parameters: {', '.join(sorted(names))}")
    if spec.parameter(lr).type != "float":
        raise ScalingError("spec.lrScaling.lrParameter", f"{lr!r} is not a float parameter")
    batch = scaling.batch_size_parameter or role_parameter(spec, "batchSize", ("int", "categorical"))
    if batch is None:
        raise ScalingError("spec.lrScaling.batchSizeParameter", "name the batch-size parameter (no single int parameter has role batchSize)")
    if batch not in names:
        raise ScalingError("spec.lrScaling.batchSizeParameter", f"{batch!r} is not a parameter; parameters: {', '.join(sorted(names))}")
    parameter = spec.parameter(batch)
    if parameter.type == "float" or (parameter.type == "categorical" and not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in parameter.values)):
        raise ScalingError("spec.lrScaling.batchSizeParameter", f"{batch!r} must be an int parameter (or categorical with positive integer values)")
    if parameter.type == "int" and parameter.min < 1:
        raise ScalingError("spec.lrScaling.batchSizeParameter", f"{batch!r} must have min >= 1 to be a batch size")
    return scaling, lr, batch


def lr_factor(study: HyperparameterStudy, parameters: Mapping[str, Any]) -> float:
    """The factor applied to the learning rate for these parameters (1 without lrScaling)."""
    resolved = resolve(study.spec)
    if resolved is None:
        return 1.0
    settings, _, batch = resolved
    return factor(settings.rule, parameters[batch], settings.base_batch_size)


def effective_parameters(study: HyperparameterStudy, parameters: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The values a trial runs with when lrScaling changes them, else None."""
    resolved = resolve(study.spec)
    if resolved is None:
        return None
    settings, lr, batch = resolved
    if lr not in parameters or batch not in parameters:
        return None
    scale = factor(settings.rule, parameters[batch], settings.base_batch_size)
    if scale == 1.0:
        return None
    return {**parameters, lr: float(f"{parameters[lr] * scale:.12g}")}
