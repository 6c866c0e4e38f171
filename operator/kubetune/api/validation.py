"""Reading a study and explaining what is wrong with it.

Every problem becomes a FieldError naming the manifest path (spec.parameters[0].max) and
what to do about it. The CLI prints them (exit code 2); the operator puts them in the
study's Ready=False condition.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from pydantic import BaseModel, ValidationError

from kubetune import scaling, stages, template
from kubetune.api.models import HyperparameterStudy
from kubetune.stoppers import STOPPERS, make_rule
from kubetune.strategies import STRATEGIES, SettingsError


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class StudyInvalid(ValueError):
    def __init__(self, errors: Sequence[FieldError], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.summary())

    def summary(self) -> str:
        return "; ".join(str(e) for e in self.errors)

    def report(self) -> str:
        head = f"{self.source}: invalid study" if self.source else "invalid study"
        return head + "\n" + "\n".join(f"  {e}" for e in self.errors)


def load_study_file(path: str | Path) -> HyperparameterStudy:
    """Read and validate a study manifest file."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise StudyInvalid([FieldError("", f"cannot read the file: {exc.strerror}")], source) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc)
        raise StudyInvalid([FieldError("", f"not valid YAML: {where}{problem}")], source) from None
    studies = [d for d in documents if isinstance(d, dict) and d.get("kind") == "HyperparameterStudy"]
    if len(documents) == 1:
        return parse_study(documents[0], source)
    if len(studies) != 1:
        raise StudyInvalid(
            [FieldError("", f"expected one HyperparameterStudy document, found {len(studies)} among {len(documents)} documents")],
            source,
        )
    return parse_study(studies[0], source)


def parse_study(data: Any, source: str = "") -> HyperparameterStudy:
    """Validate a manifest (a dict) into a study, or raise StudyInvalid with every problem found."""
    if not isinstance(data, dict):
        raise StudyInvalid([FieldError("", f"a study manifest is a mapping, got {type(data).__name__}")], source)
    try:
        study = HyperparameterStudy.model_validate(data)
    except ValidationError as exc:
        raise StudyInvalid([_field_error(e) for e in exc.errors()], source) from None
    errors = check_study(study)
    if errors:
        raise StudyInvalid(errors, source)
    return study


def check_study(study: HyperparameterStudy) -> list[FieldError]:
    """Rules that need more than one field or knowledge of strategies and placeholders."""
    errors: list[FieldError] = []
    spec = study.spec
    errors.extend(_check_stages(study))
    try:
        scaling.resolve(spec)
    except scaling.ScalingError as exc:
        errors.append(FieldError(exc.path, str(exc)))
    early = spec.early_stopping
    if early is not None and early.name is not None and early.name not in STOPPERS:
        errors.append(FieldError(
            "spec.earlyStopping.name",
            f"unknown early-stopping rule {early.name!r}; available: {', '.join(sorted(STOPPERS))}; "
            f"leave it out to run without one",
        ))
    elif early is not None:
        try:
            make_rule(study)
        except SettingsError as exc:
            errors.append(FieldError(f"spec.earlyStopping.settings.{exc.key}", str(exc)))
    known = template.known_placeholders(study)
    containers = spec.trial_template.template.spec.containers
    for c_index, container in enumerate(containers):
        for where, text in template.template_fields(container):
            for name in template.placeholders(text):
                if name not in known:
                    hint = _did_you_mean(name, known)
                    errors.append(FieldError(
                        f"spec.trialTemplate.template.spec.containers[{c_index}].{where}",
                        f"unknown placeholder ${{{name}}}{hint}; available: "
                        + ", ".join(f"${{{k}}}" for k in known),
                    ))
    return errors


def _check_stages(study: HyperparameterStudy) -> list[FieldError]:
    """Every stage (a study without stages is one) has a known strategy with valid settings."""
    spec = study.spec
    for i, stage in enumerate(spec.stages or []):
        if stage.strategy is not None and stage.strategy.name not in STRATEGIES:
            return [_unknown_strategy(f"spec.stages[{i}].strategy.name", stage.strategy.name)]
    if spec.strategy.name not in STRATEGIES:
        return [_unknown_strategy("spec.strategy.name", spec.strategy.name)]
    try:
        all_stages = stages.stages(study)
    except stages.StageError as exc:
        return [FieldError(exc.path, str(exc))]
    errors: list[FieldError] = []
    range_tests = [s for s in all_stages if s.is_range_test]
    for stage in all_stages:
        own = stage.path != "spec" and spec.stages is not None and spec.stages[stage.position].strategy is not None
        where = f"{stage.path}.strategy" if own else "spec.strategy"
        if stage.path == "spec.stagePreset.lrRangeTest":
            where = stage.path
        try:
            stages.make_strategy(study, stage)
        except SettingsError as exc:
            path = f"{where}.{exc.key}" if where == stage.path else f"{where}.settings.{exc.key}"
            errors.append(FieldError(path, str(exc)))
            continue
        if stage.is_range_test and stage.name is not None and len(stage.parameters) != 1:
            errors.append(FieldError(f"{stage.path}.parameters", "a range-test stage searches exactly one parameter, the learning rate"))
    if len(range_tests) > 1:
        errors.append(FieldError(range_tests[1].path, "a study runs at most one learning-rate range test"))
    return errors


def _unknown_strategy(path: str, name: str) -> FieldError:
    return FieldError(path, f"unknown strategy {name!r}; available: {', '.join(sorted(STRATEGIES))}")


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" (did you mean ${{{close[0]}}}?)" if close else ""


def _field_error(error: dict[str, Any]) -> FieldError:
    loc = error.get("loc", ())
    path = _path(loc)
    kind = error.get("type")
    message = error.get("msg", "invalid")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc[:-1])
        hint = _did_you_mean_field(str(loc[-1]), allowed)
        message = f"unknown field{hint}; allowed here: {', '.join(allowed)}" if allowed else "unknown field"
    elif kind == "missing":
        message = "required field is missing"
    elif message.startswith("Value error, "):
        message = message[len("Value error, "):]
    elif kind == "string_pattern_mismatch" and loc[-1] == "name" and loc[:1] == ("metadata",):
        message = "must be lowercase letters, digits and '-', starting and ending with a letter or digit (a Kubernetes name)"
    elif kind == "literal_error" and loc == ("apiVersion",):
        message = "must be kubetune.io/v1alpha1"
    elif kind == "literal_error" and loc == ("kind",):
        message = "must be HyperparameterStudy"
    return FieldError(path, message)


def _did_you_mean_field(name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _path(loc: Sequence[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "union[")):
            continue
        else:
            path += ("." if path else "") + str(part)
    return path


def _allowed_fields(loc: Sequence[Any]) -> list[str]:
    """The field names (as written in manifests) of the model found at `loc`."""
    model: Optional[type[BaseModel]] = HyperparameterStudy
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        model = _model_of(field.annotation)
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_of(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
