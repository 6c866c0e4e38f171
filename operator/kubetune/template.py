"""Turning the trial template into what one trial runs: placeholders and the environment.

Shared by the local runner (a subprocess) and the operator (a Job), so a study behaves the
same in both bodies.
"""

from __future__ import annotations

import json
import re
from typing import Mapping, Optional

from kubetune import scaling, space
from kubetune.api.models import Container, HyperparameterStudy, TrialSpec
from kubetune.trial import (
    ENV_LR_RANGE_TEST,
    ENV_METRICS_PORT,
    ENV_NAMESPACE,
    ENV_PARAMS,
    ENV_RAW_PARAMS,
    ENV_STUDY,
    ENV_TRIAL,
)

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
FIXED_PLACEHOLDERS = ("trial.name", "trial.index", "study.name", "study.namespace")


def placeholders(text: str) -> list[str]:
    return PLACEHOLDER.findall(text)


MAX_RESOURCE_PLACEHOLDER = "study.maxResource"
ENV_MAX_RESOURCE = "KUBETUNE_MAX_RESOURCE"


def known_placeholders(study: HyperparameterStudy) -> list[str]:
    known = [f"params.{p.name}" for p in study.spec.parameters] + list(FIXED_PLACEHOLDERS)
    known += [f"raw.{name}" for name in _scaled(study)]
    if max_resource(study) is not None:
        known.append(MAX_RESOURCE_PLACEHOLDER)
    return known


def max_resource(study: HyperparameterStudy) -> Optional[int]:
    """spec.earlyStopping's maxResource (asha, hyperband): the steps of a complete trial, for
    example --epochs=${study.maxResource}, so the trial runs exactly as long as the rule's
    schedule expects. None without such a rule, or when its settings are invalid (reported
    by validation)."""
    from kubetune.stoppers import max_resource as rule_max_resource  # stoppers import the engine's modules
    from kubetune.strategies import SettingsError

    try:
        return rule_max_resource(study)
    except (KeyError, SettingsError):
        return None


def _scaled(study: HyperparameterStudy) -> list[str]:
    """The parameter lrScaling rescales (its raw value is ${raw.NAME}), if any."""
    try:
        resolved = scaling.resolve(study.spec)
    except scaling.ScalingError:
        return []  # reported by validation
    return [] if resolved is None else [resolved[1]]


def template_fields(container: Container) -> list[tuple[str, str]]:
    """(path below the container, text) of every field where placeholders are substituted."""
    fields: list[tuple[str, str]] = []
    for key in ("command", "args"):
        for i, text in enumerate(getattr(container, key) or []):
            fields.append((f"{key}[{i}]", text))
    for i, var in enumerate(container.env or []):
        if var.value is not None:
            fields.append((f"env[{i}].value", var.value))
    return fields


def substitute(text: str, values: Mapping[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def placeholder_values(study: HyperparameterStudy, trial: str, spec: TrialSpec) -> dict[str, str]:
    """${params.NAME} is the value the trial runs with (the learning rate scaled by lrScaling),
    ${raw.NAME} the searched value before scaling."""
    running = spec.effective_parameters or spec.parameters
    values = {f"params.{name}": space.format_value(value) for name, value in running.items()}
    values.update({f"raw.{name}": space.format_value(spec.parameters[name])
                   for name in _scaled(study) if name in spec.parameters})
    values.update({
        "trial.name": trial,
        "trial.index": str(spec.index),
        "study.name": study.metadata.name,
        "study.namespace": study.metadata.namespace or "",
    })
    resource = max_resource(study)
    if resource is not None:
        values[MAX_RESOURCE_PLACEHOLDER] = str(resource)
    return values


def trial_environment(
    study: HyperparameterStudy,
    trial: str,
    spec: TrialSpec,
    metrics_port: Optional[int] = None,
) -> dict[str, str]:
    """The KUBETUNE_* variables every trial gets (see kubetune.trial for the contract)."""
    running = spec.effective_parameters or spec.parameters
    env = {
        ENV_STUDY: study.metadata.name,
        ENV_TRIAL: trial,
        ENV_NAMESPACE: study.metadata.namespace or "",
        ENV_PARAMS: json.dumps(dict(running), sort_keys=True),
    }
    for p in study.spec.parameters:
        if p.name in running:
            env[p.env_name] = space.format_value(running[p.name])
    if spec.effective_parameters is not None:
        env[ENV_RAW_PARAMS] = json.dumps(dict(spec.parameters), sort_keys=True)
    if spec.lr_range_test is not None:
        env[ENV_LR_RANGE_TEST] = json.dumps(spec.lr_range_test.to_wire(), sort_keys=True)
    resource = max_resource(study)
    if resource is not None:
        env[ENV_MAX_RESOURCE] = str(resource)
    if metrics_port is not None:
        env[ENV_METRICS_PORT] = str(metrics_port)
    return env


def render_container(
    container: Container, values: Mapping[str, str]
) -> tuple[Optional[list[str]], Optional[list[str]], list[tuple[str, str]]]:
    """The container's command, args and (name, value) env with placeholders substituted."""
    command = [substitute(t, values) for t in container.command] if container.command is not None else None
    args = [substitute(t, values) for t in container.args] if container.args is not None else None
    env = [(v.name, substitute(v.value, values)) for v in container.env or [] if v.value is not None]
    return command, args, env
