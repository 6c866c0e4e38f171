"""The kubetune API (group kubetune.io, version v1alpha1) as pydantic models.

These models are the single source of truth: the CRDs in `crds/` are generated from them
(`kubetune crds`), the local runner and the operator parse manifests with them, and the
field descriptions become `kubectl explain` text. Rules that a structural schema cannot
express are attached as CEL `x-kubernetes-validations` (see `cel_rules`) and enforced here
again by model validators, so the CLI gives the same answer as the API server.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubetune.trial import env_name as trial_env_name

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Trial and Job names are "<study>-<index, zero-padded to 4>", and a Job's name becomes a pod
# label (at most 63 characters): 52 + "-" + up to 7 digits (10 million trials) leaves room for
# the suffix the Job controller adds to its pods' names.
MAX_STUDY_NAME_LENGTH = 52
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PARAMETER_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]*$"
MAX_PARAMETERS = 64
MAX_TRIALS_LIMIT = 1_000_000

Goal = Literal["minimize", "maximize"]
ParameterType = Literal["float", "int", "categorical"]
Scale = Literal["linear", "log", "pow2"]
ParameterRole = Literal["learningRate", "batchSize", "regularization", "architecture", "other"]
#: The order in which the priority preset tunes parameter roles: the learning rate first.
ROLE_PRIORITY: tuple[str, ...] = ("learningRate", "batchSize", "regularization", "architecture", "other")
StudyPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
TrialPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Pruned", "Stopped"]
ConditionStatus = Literal["True", "False", "Unknown"]
CategoricalValue = Union[bool, int, float, str]

TERMINAL_TRIAL_PHASES = frozenset({"Succeeded", "Failed", "Pruned", "Stopped"})
ACTIVE_TRIAL_PHASES = frozenset({"Pending", "Running"})


#: Spec fields (wire names) that may not change once a study has trials: a change would make
#: its trials incomparable (objective, parameters, lrScaling) or contradict the values its
#: finished stages fixed (stages, stagePreset). CEL rules on the fields refuse an edit; both
#: bodies also compare (an API server without CEL, a field added later, a local output folder).
IMMUTABLE_FIELDS = ("objective", "parameters", "lrScaling", "stages", "stagePreset")


def cel_rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """JSON-schema extra carrying CEL rules as (rule, message) pairs."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


class ApiModel(BaseModel):
    """Base for API objects: camelCase on the wire, unknown fields are errors (typos surface)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=to_camel,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The manifest form: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class OpenModel(ApiModel):
    """A Kubernetes object we read only part of: other fields pass through untouched."""

    model_config = ConfigDict(extra="allow")


# ---------------------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------------------


class Objective(ApiModel):
    """What the study optimises: one metric the trials report, and its direction."""

    metric: str = Field(
        min_length=1,
        max_length=128,
        description="Name of the metric the trials report (for example val_loss); its final value is the trial's objective.",
    )
    goal: Goal = Field(
        default="minimize",
        description="Whether a lower (minimize) or higher (maximize) metric value is better.",
    )
    target: Optional[float] = Field(
        default=None,
        description="Optional value that ends the study successfully as soon as a trial reaches it (at or below it when minimizing, at or above when maximizing); running trials are then stopped.",
    )
    additional_metrics: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Other metrics to show beside the objective in progress lines and summaries; every reported metric is recorded either way, and these do not steer the search.",
    )

    @field_validator("target")
    @classmethod
    def _finite_target(cls, value: Optional[float]) -> Optional[float]:
        if value is not None and not math.isfinite(value):
            raise ValueError("target must be a finite number")
        return value


class Parameter(ApiModel):
    """One hyperparameter and the space it is searched over."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.type == 'categorical' ? (has(self.values) && size(self.values) > 0 && !has(self.min) && !has(self.max)) : (has(self.min) && has(self.max) && !has(self.values))",
                "float and int parameters need min and max (and no values); categorical parameters need values (and no min or max)",
            ),
            (
                "!has(self.min) || !has(self.max) || double(self.min) < double(self.max)",
                "min must be less than max",
            ),
            (
                "!has(self.scale) || self.scale != 'log' || (has(self.min) && double(self.min) > 0.0)",
                "a log scale needs min > 0",
            ),
            (
                "!has(self.scale) || self.scale != 'pow2' || self.type == 'int'",
                "scale pow2 is only for int parameters",
            ),
            (
                "self.type != 'categorical' || !has(self.scale) || self.scale == 'linear'",
                "categorical parameters have no scale",
            ),
            (
                "!has(self.step) || !has(self.scale) || self.scale == 'linear'",
                "step is only allowed with the linear scale",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=PARAMETER_NAME_PATTERN,
        description="Parameter name, used in ${params.NAME} placeholders and as KUBETUNE_PARAM_<NAME> (upper-cased, other characters as _).",
    )
    type: ParameterType = Field(description="float, int or categorical.")
    min: Optional[Union[int, float]] = Field(
        default=None, description="Lower bound, inclusive (float and int)."
    )
    max: Optional[Union[int, float]] = Field(
        default=None, description="Upper bound, inclusive (float and int)."
    )
    scale: Scale = Field(
        default="linear",
        description="How values are spread: linear; log (log-uniform, the right choice for learning rates and regularisation strengths; needs min > 0); pow2 (int only: powers of two between min and max, the usual choice for batch sizes).",
    )
    step: Optional[float] = Field(
        default=None,
        gt=0,
        description="Optional spacing of allowed values on the linear scale (for example 0.05 for dropout); int parameters default to 1.",
    )
    values: Optional[list[CategoricalValue]] = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="The choices of a categorical parameter (strings, numbers or booleans).",
        json_schema_extra={"items": {"x-kubernetes-preserve-unknown-fields": True}},
    )
    default: Optional[CategoricalValue] = Field(
        default=None,
        description="The value used while this parameter is not being searched: by a learning-rate range test, and by the stages that tune other parameters before this one. By default the middle of the range (the geometric middle on log and pow2 scales) or the first of the values.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    role: Optional[ParameterRole] = Field(
        default=None,
        description="What the parameter controls, for the priority stage preset and lrScaling: learningRate, batchSize, regularization, architecture or other. By default guessed from the name (lr or learning_rate: learningRate; batch_size: batchSize; weight_decay, dropout, l2...: regularization; width, depth, layers, hidden...: architecture).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "Parameter":
        if self.type == "categorical":
            if self.values is None:
                raise ValueError("a categorical parameter needs values, for example values: [sgd, adam]")
            if self.min is not None or self.max is not None:
                raise ValueError("a categorical parameter takes values, not min/max")
            if self.scale != "linear":
                raise ValueError("a categorical parameter has no scale")
            if self.step is not None:
                raise ValueError("a categorical parameter has no step")
            if len({_value_key(v) for v in self.values}) != len(self.values):
                raise ValueError("values must not repeat")
            return self
        article = "an" if self.type == "int" else "a"
        if self.values is not None:
            raise ValueError(f"{article} {self.type} parameter takes min and max, not values (use type: categorical for a list)")
        if self.min is None or self.max is None:
            raise ValueError(f"{article} {self.type} parameter needs both min and max")
        if not (math.isfinite(self.min) and math.isfinite(self.max)):
            raise ValueError("min and max must be finite numbers")
        if not self.min < self.max:
            raise ValueError(f"min must be less than max (got min={self.min}, max={self.max})")
        if self.scale in ("log", "pow2") and self.min <= 0:
            raise ValueError(f"scale {self.scale} needs min > 0 (got min={self.min})")
        if self.step is not None and self.scale != "linear":
            raise ValueError(f"step only applies to the linear scale, not {self.scale}")
        if self.type == "float":
            if self.scale == "pow2":
                raise ValueError("scale pow2 is for int parameters; use scale: log for floats")
            return self
        # int
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if float(value) != int(value):
                raise ValueError(f"{bound} of an int parameter must be a whole number (got {value})")
            setattr(self, bound, int(value))
        if self.step is not None:
            if float(self.step) != int(self.step):
                raise ValueError(f"step of an int parameter must be a whole number (got {self.step})")
        if self.scale == "pow2":
            for bound in ("min", "max"):
                value = getattr(self, bound)
                if value & (value - 1):
                    raise ValueError(
                        f"{bound} of a pow2 parameter must be a power of two (got {value}; nearest: {_nearest_pow2(value)})"
                    )
        return self

    @model_validator(mode="after")
    def _default_in_space(self) -> "Parameter":
        value = self.default
        if value is None:
            return self
        if self.type == "categorical":
            if _value_key(value) not in {_value_key(v) for v in self.values}:
                raise ValueError(f"default {value!r} is not one of the values {self.values}")
            return self
        if isinstance(value, (bool, str)) or not self.min <= value <= self.max:
            raise ValueError(f"default must be a number between min and max (got {value!r})")
        if self.type == "int" and float(value) != int(value):
            raise ValueError(f"default of an int parameter must be a whole number (got {value})")
        if self.scale == "pow2" and int(value) & (int(value) - 1):
            raise ValueError(f"default of a pow2 parameter must be a power of two (got {value})")
        if self.type == "int":
            self.default = int(value)
        return self

    @property
    def env_name(self) -> str:
        return trial_env_name(self.name)

    @property
    def effective_role(self) -> str:
        """The role given, else the one its name suggests."""
        if self.role is not None:
            return self.role
        snake = re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", self.name).lower())
        words = set(snake.split("_"))
        if words & {"lr", "eta"} or "learning_rate" in snake:
            return "learningRate"
        if "batch" in words or "batchsize" in words or "bs" in words:
            return "batchSize"
        if words & {"dropout", "decay", "wd", "l1", "l2", "regularization", "regularisation", "reg", "alpha",
                    "smoothing", "penalty"}:
            return "regularization"
        if words & {"width", "depth", "layers", "layer", "hidden", "units", "channels", "heads", "dim",
                    "activation", "blocks", "kernel", "filters", "size"}:
            return "architecture"
        return "other"


def _nearest_pow2(value: int) -> int:
    lower = 1 << max(0, value.bit_length() - 1)
    return lower if value - lower <= 2 * lower - value else 2 * lower


def _value_key(value: CategoricalValue) -> tuple[str, Any]:
    # True == 1 in Python; keep them distinct choices.
    return (type(value).__name__, value)


class Strategy(ApiModel):
    """How the next configurations are proposed."""

    name: str = Field(
        default="auto",
        description="Search strategy: auto (the default: picks one from the space and budget and says which in status.strategy), bayesian (Gaussian-process Bayesian optimisation after a Sobol design; the most sample-efficient for numeric spaces), sobol (quasi-random points that fill the space evenly), random (independent samples, log-uniform on log scales) or grid (every combination in order).",
    )
    seed: Optional[int] = Field(
        default=None,
        ge=0,
        le=2**31 - 1,
        description="Random seed. The same seed and trial history give the same suggestions; by default it is derived from the study name.",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Strategy-specific settings, for example {resolution: 5} for grid search over continuous parameters.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class DivergenceGuard(ApiModel):
    """The divergence guard: on by default, whatever early-stopping rule is chosen."""

    enabled: bool = Field(
        default=True,
        description="Stop a trial at once, with phase Pruned and reason Diverged, when a metric it reports is NaN or infinite, a loss grows past factor times its first value, or a loss's first report, at the study's earliest step, is more than 100 times the median of at least 5 other trials' reports there.",
    )
    factor: float = Field(
        default=10.0,
        gt=1,
        description="How many times its first reported value a loss may grow to before the trial counts as diverged. Watched: the objective when minimized, and every metric with 'loss' in its name.",
    )


class EarlyStopping(ApiModel):
    """Rules that stop unpromising trials before they finish; stopped trials become Pruned."""

    name: Optional[str] = Field(
        default=None,
        description="Early-stopping rule: median (stop a trial whose best value so far is worse than the median of completed trials at the same step), asha (asynchronous successive halving on the reported step), hyperband (brackets of ASHA), or unset for none (the divergence guard still applies).",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Rule-specific settings. median: warmupSteps, minTrials. asha and hyperband: reductionFactor, minResource (default maxResource / reductionFactor^3 rounded up, at least 1), maxResource (the steps of a complete trial, substituted for ${study.maxResource}; required by hyperband).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    divergence: DivergenceGuard = Field(
        default_factory=DivergenceGuard,
        description="The divergence guard, on by default; set enabled: false to let diverging trials run on.",
    )


class LrScaling(ApiModel):
    """Scale each trial's learning rate with its batch size, so a tuned rate stays meaningful."""

    rule: Literal["linear", "sqrt"] = Field(
        description="linear: the learning rate grows in proportion to the batch size (Goyal et al. 2017, for SGD); sqrt: with its square root (often better for Adam).",
    )
    base_batch_size: int = Field(
        ge=1,
        description="The batch size at which the learning rate parameter's value is used as it is.",
    )
    lr_parameter: Optional[str] = Field(
        default=None,
        description="The learning-rate parameter to scale; by default the one whose role is learningRate.",
    )
    batch_size_parameter: Optional[str] = Field(
        default=None,
        description="The batch-size parameter; by default the one whose role is batchSize.",
    )


class Stage(ApiModel):
    """One stage of a staged study: a group of parameters tuned while the others stay fixed."""

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN, description="Stage name (shown in status.stages and on its trials).")
    parameters: list[str] = Field(
        min_length=1,
        max_length=MAX_PARAMETERS,
        description="Names of the parameters this stage searches. Parameters of earlier stages stay at their best values; parameters of later stages (and of none) at their defaults.",
    )
    strategy: Optional[Strategy] = Field(
        default=None,
        description="How this stage proposes configurations; by default spec.strategy (with a seed derived per stage). Use lr-range-test for a one-trial learning-rate range test.",
    )
    max_trials: Optional[int] = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS_LIMIT,
        description="This stage's trial budget. Stages without one share what is left of spec.budget.maxTrials evenly (earlier stages get the remainder); a range test always takes one trial.",
    )


class StagePreset(ApiModel):
    """Stages built from the parameters' roles."""

    name: Literal["priority"] = Field(
        description="priority: one stage per parameter role, in the order practitioners tune them: learningRate, batchSize, regularization, architecture, other (roles without parameters are skipped).",
    )
    lr_range_test: Optional[dict[str, Any]] = Field(
        default=None,
        description="Start with a learning-rate range test instead of searching the learning rate: set it (to {} for the defaults) with the lr-range-test strategy's settings (minLr, maxLr, steps, beta, stopFactor, rule). The trainer must support the range-test mode.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class Budget(ApiModel):
    """How many trials the study may run, and how many at once."""

    max_trials: int = Field(
        default=10,
        ge=1,
        le=MAX_TRIALS_LIMIT,
        description="Total number of trials. Trials stopped by a suspension or by the study ending do not count. Raising it on a finished study resumes the study.",
    )
    parallel_trials: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="How many trials run at the same time.",
    )
    max_failed_trials: int = Field(
        default=3,
        ge=0,
        description="The study fails when more than this many trials have failed.",
    )


class EnvVar(OpenModel):
    name: str = Field(description="Environment variable name.")
    value: Optional[str] = Field(default=None, description="Value; ${params.NAME} placeholders are substituted.")


class Container(OpenModel):
    """A core/v1 Container; kubetune reads and substitutes only the fields listed here."""

    name: str = Field(description="Container name.")
    image: Optional[str] = Field(default=None, description="Container image.")
    command: Optional[list[str]] = Field(default=None, description="Entrypoint; ${params.NAME} placeholders are substituted.")
    args: Optional[list[str]] = Field(default=None, description="Arguments; ${params.NAME} placeholders are substituted.")
    env: Optional[list[EnvVar]] = Field(default=None, description="Environment variables; ${params.NAME} placeholders in values are substituted.")


class PodSpec(OpenModel):
    """A core/v1 PodSpec (all of its fields are allowed)."""

    containers: list[Container] = Field(min_length=1, description="The pod's containers; the trial runs in the primary one.")


class PodTemplateMeta(ApiModel):
    labels: dict[str, str] = Field(default_factory=dict, description="Labels added to each trial pod.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations added to each trial pod.")


class PodTemplate(ApiModel):
    """A core/v1 PodTemplateSpec."""

    metadata: PodTemplateMeta = Field(default_factory=PodTemplateMeta, description="Labels and annotations for trial pods.")
    spec: PodSpec = Field(description="The pod spec each trial runs with.")


class TrialTemplate(ApiModel):
    """How one trial runs: a pod template with ${params.NAME} placeholders."""

    retries: int = Field(
        default=0,
        ge=0,
        le=10,
        description="How often a failed trial is restarted with the same parameters before it counts as failed (the Job's backoffLimit).",
    )
    timeout_seconds: Optional[int] = Field(
        default=None,
        ge=1,
        description="A trial running longer than this is stopped and fails with reason DeadlineExceeded (the Job's activeDeadlineSeconds).",
    )
    primary_container_name: Optional[str] = Field(
        default=None,
        description="The container that runs the training and reports metrics; by default the first container.",
    )
    template: PodTemplate = Field(
        description="A core/v1 PodTemplateSpec. ${params.NAME}, ${trial.name}, ${trial.index}, ${study.name} and ${study.namespace} are substituted in command, args and env values, and ${study.maxResource} when spec.earlyStopping sets maxResource."
    )

    @model_validator(mode="after")
    def _primary_exists(self) -> "TrialTemplate":
        if self.primary_container_name is not None:
            names = [c.name for c in self.template.spec.containers]
            if self.primary_container_name not in names:
                raise ValueError(
                    f"primaryContainerName {self.primary_container_name!r} is not one of the containers {names}"
                )
        return self

    @property
    def primary_container(self) -> Container:
        containers = self.template.spec.containers
        if self.primary_container_name is None:
            return containers[0]
        return next(c for c in containers if c.name == self.primary_container_name)


class StudySpec(ApiModel):
    """The desired study: what to optimise, over which space, how, and with what budget."""

    objective: Objective = Field(
        description="The metric to optimise; immutable after creation.",
        json_schema_extra=cel_rules(("self == oldSelf", "objective is immutable; create a new study to change it")),
    )
    parameters: list[Parameter] = Field(
        min_length=1,
        max_length=MAX_PARAMETERS,
        description="The search space; immutable after creation.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **cel_rules(("self == oldSelf", "parameters are immutable; create a new study to change the search space")),
        },
    )
    strategy: Strategy = Field(default_factory=Strategy, description="How configurations are proposed.")
    early_stopping: Optional[EarlyStopping] = Field(
        default=None,
        description="Optional rule that stops unpromising trials early. Without it the divergence guard still stops diverged trials.",
    )
    budget: Budget = Field(default_factory=Budget, description="Trial budget and parallelism.")
    lr_scaling: Optional[LrScaling] = Field(
        default=None,
        description="Scale the learning rate each trial gets with its batch size (linear or square-root rule). The search (and status) works on the raw value; ${params.LR} and KUBETUNE_PARAMS carry the scaled one, ${raw.LR} and KUBETUNE_RAW_PARAMS the raw one. Immutable once set.",
        json_schema_extra=cel_rules(("self == oldSelf", "lrScaling is immutable: trials scaled two ways are not comparable; create a new study to change it")),
    )
    stages: Optional[list[Stage]] = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Tune in stages, one group of parameters at a time, each stage with its own budget and strategy; later stages fix the earlier stages' parameters at their best values. Immutable once set.",
        json_schema_extra=cel_rules(("self == oldSelf", "stages are immutable: finished stages have fixed values the later ones build on; create a new study to change them")),
    )
    stage_preset: Optional[StagePreset] = Field(
        default=None,
        description="Build the stages from the parameters' roles instead of listing them (the priority preset); cannot be combined with stages. Immutable once set.",
        json_schema_extra=cel_rules(("self == oldSelf", "stagePreset is immutable: finished stages have fixed values the later ones build on; create a new study to change it")),
    )
    suspend: bool = Field(
        default=False,
        description="Suspend the study: running trials are stopped and no new ones start until it is set back to false.",
    )
    trial_template: TrialTemplate = Field(description="How each trial runs.")

    def immutable_fields(self) -> dict[str, Any]:
        """Each immutable field that is set, by its wire name, in its wire form."""
        wire = self.to_wire()
        return {name: wire[name] for name in IMMUTABLE_FIELDS if name in wire}

    @field_validator("parameters")
    @classmethod
    def _unique_names(cls, parameters: list[Parameter]) -> list[Parameter]:
        seen: dict[str, str] = {}
        for p in parameters:
            if p.name in seen:
                raise ValueError(f"parameter name {p.name!r} appears twice")
            if p.env_name in seen.values():
                raise ValueError(f"parameters {p.name!r} and another map to the same variable {p.env_name}")
            seen[p.name] = p.env_name
        return parameters

    @model_validator(mode="after")
    def _one_way_of_staging(self) -> "StudySpec":
        if self.stages is not None and self.stage_preset is not None:
            raise ValueError("set either stages or stagePreset, not both")
        return self

    def parameter(self, name: str) -> Parameter:
        return next(p for p in self.parameters if p.name == name)


class ObjectMeta(OpenModel):
    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN, description="Object name.")
    namespace: Optional[str] = Field(default=None, description="Namespace.")
    generation: Optional[int] = Field(default=None, description="Spec generation, set by the API server.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class StudyMeta(ObjectMeta):
    name: str = Field(
        min_length=1,
        max_length=MAX_STUDY_NAME_LENGTH,
        pattern=NAME_PATTERN,
        description=f"Study name: lowercase letters, digits and '-', at most {MAX_STUDY_NAME_LENGTH} characters (trial and Job names append an index).",
    )


# ---------------------------------------------------------------------------------------
# Status
# ---------------------------------------------------------------------------------------


class Condition(ApiModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(description="Condition type, for example Ready, Running, Succeeded, Failed, Suspended.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable details.")
    observed_generation: Optional[int] = Field(default=None, description="The spec generation this condition was computed from.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")


class TrialCounts(ApiModel):
    """Number of trials in each phase."""

    total: int = Field(default=0, description="All trials created so far.")
    pending: int = Field(default=0, description="Trials waiting to start.")
    running: int = Field(default=0, description="Trials running now.")
    succeeded: int = Field(default=0, description="Trials that finished successfully.")
    failed: int = Field(default=0, description="Trials that failed (after their retries).")
    pruned: int = Field(default=0, description="Trials stopped early by the early-stopping rule.")
    stopped: int = Field(default=0, description="Trials stopped unfinished by a suspension or by the study ending.")


class BestTrial(ApiModel):
    """The best trial so far."""

    name: str = Field(description="Trial name.")
    parameters: dict[str, Any] = Field(
        description="The trial's parameter values.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    objective: float = Field(description="The trial's objective metric value.")
    effective_parameters: Optional[dict[str, Any]] = Field(
        default=None,
        description="The values the trial ran with, where lrScaling changed them.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="All final metrics of the trial.")


class StrategyStatus(ApiModel):
    name: str = Field(description="The strategy in use.")
    seed: int = Field(description="The seed in use.")
    chosen: Optional[str] = Field(default=None, description="The strategy auto picked.")
    reason: Optional[str] = Field(default=None, description="Why auto picked it.")


class CurvePoint(ApiModel):
    lr: float = Field(description="Learning rate.")
    loss: float = Field(description="Smoothed training loss at that learning rate.")


MAX_CURVE_POINTS = 100


class LrRangeTestStatus(ApiModel):
    """The learning-rate range test's outcome."""

    trial: str = Field(description="The range-test trial.")
    parameter: str = Field(description="The learning-rate parameter.")
    rule: str = Field(description="The rule that picked the learning rate: steepest, valley or divergence.")
    learning_rate: Optional[float] = Field(default=None, description="The learning rate picked (the parameter's raw value when lrScaling applies), or unset when the curve allowed no choice.")
    message: str = Field(default="", description="How the value was picked, or why none was.")
    curve: list[CurvePoint] = Field(
        default_factory=list,
        max_length=MAX_CURVE_POINTS,
        description=f"The smoothed loss against the learning rate, at most {MAX_CURVE_POINTS} evenly spaced points.",
    )


class StageStatus(ApiModel):
    """Progress and outcome of one stage."""

    name: str = Field(description="Stage name.")
    parameters: list[str] = Field(description="The parameters this stage searches.")
    strategy: str = Field(description="The strategy this stage uses.")
    phase: Literal["Pending", "Running", "Succeeded"] = Field(description="Pending (an earlier stage is running), Running or Succeeded.")
    max_trials: int = Field(description="The stage's trial budget.")
    trials: int = Field(default=0, description="Trials started in this stage (not counting trials stopped by a suspension).")
    best_trial: Optional[str] = Field(default=None, description="The stage's best trial.")
    best_objective: Optional[float] = Field(default=None, description="Its objective value.")
    fixed: dict[str, Any] = Field(
        default_factory=dict,
        description="The values this stage's trials use for the parameters it does not search (earlier stages' best, else defaults).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    result: dict[str, Any] = Field(
        default_factory=dict,
        description="The values this stage settled on for its parameters, fixed for the stages after it.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    message: str = Field(default="", description="How the result was chosen.")


class StudyStatus(ApiModel):
    """Observed state of the study. Its size is bounded: per-trial data lives on the trials."""

    phase: StudyPhase = Field(default="Pending", description="Pending, Running, Succeeded, Failed or Suspended.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Running, Succeeded, Failed and Suspended conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    trials: TrialCounts = Field(default_factory=TrialCounts, description="Trial counts by phase.")
    best_trial: Optional[BestTrial] = Field(default=None, description="The best trial so far.")
    strategy: Optional[StrategyStatus] = Field(default=None, description="The strategy and seed in use.")
    stages: list[StageStatus] = Field(default_factory=list, description="Each stage's progress and outcome (staged studies only).")
    lr_range_test: Optional[LrRangeTestStatus] = Field(default=None, description="The learning-rate range test's curve and pick, once it has run.")
    observed_generation: Optional[int] = Field(default=None, description="The spec generation last acted on.")
    start_time: Optional[str] = Field(default=None, description="When the first trial was created.")
    completion_time: Optional[str] = Field(default=None, description="When the study finished.")

    def condition(self, type_: str) -> Optional[Condition]:
        return next((c for c in self.conditions if c.type == type_), None)


class HyperparameterStudy(ApiModel):
    """A hyperparameter study: trials of one training program over a search space."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion", description="kubetune.io/v1alpha1")
    kind: Literal["HyperparameterStudy"] = Field(description="HyperparameterStudy")
    metadata: StudyMeta
    spec: StudySpec
    status: Optional[StudyStatus] = None


# ---------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------


class LrRangeTestRun(ApiModel):
    """What a range-test trial runs: the learning rate grows exponentially from minLr to maxLr."""

    min_lr: float = Field(gt=0, description="The learning rate of the first step.")
    max_lr: float = Field(gt=0, description="The learning rate of the last step.")
    steps: int = Field(ge=5, description="Training steps (mini-batches) from minLr to maxLr.")
    beta: float = Field(ge=0, lt=1, description="Smoothing of the reported loss (exponential moving average).")
    stop_factor: float = Field(gt=1, description="The trial ends once the smoothed loss exceeds this multiple of its best value.")


class TrialSpec(ApiModel):
    """One trial of a study: fixed parameter values. Immutable."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(("self == oldSelf", "a trial's spec is immutable"))
    )

    study: str = Field(description="Name of the study this trial belongs to.")
    index: int = Field(ge=0, description="Position of the trial in its study, from 0.")
    parameters: dict[str, Any] = Field(
        description="Parameter values of this trial.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    rerun_of: Optional[str] = Field(
        default=None,
        description="The trial whose parameters this one runs again, because that trial was stopped unfinished (by a suspension or by the study ending).",
    )
    stage: Optional[str] = Field(default=None, description="The stage this trial belongs to (staged studies).")
    effective_parameters: Optional[dict[str, Any]] = Field(
        default=None,
        description="The values the trial runs with where they differ from parameters: the learning rate scaled by spec.lrScaling.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    lr_range_test: Optional[LrRangeTestRun] = Field(
        default=None,
        description="Set on a learning-rate range-test trial: the trainer sweeps the learning rate instead of training normally (KUBETUNE_LR_RANGE_TEST).",
    )


MAX_INTERMEDIATE_REPORTS = 100


class IntermediateReport(ApiModel):
    """One intermediate report the operator observed: a step and its finite metric values."""

    step: int = Field(description="The step (for example epoch) the trial reported.")
    metrics: dict[str, float] = Field(default_factory=dict, description="The metric values at that step.")


class TrialStatus(ApiModel):
    """Observed state of one trial."""

    phase: TrialPhase = Field(default="Pending", description="Pending, Running, Succeeded, Failed, Pruned or Stopped.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final (or latest) metric values.")
    step: Optional[int] = Field(default=None, description="The last step (for example epoch) the trial reported.")
    reported_steps: int = Field(default=0, description="How many intermediate reports were observed.")
    intermediate: list[IntermediateReport] = Field(
        default_factory=list,
        max_length=MAX_INTERMEDIATE_REPORTS,
        description=f"The intermediate reports the operator saw, one per observed step, for early stopping (cluster only). At most {MAX_INTERMEDIATE_REPORTS}: beyond that every other older report is dropped, the first always kept.",
    )
    attempts: int = Field(default=0, description="How many times the trial was started.")
    reason: Optional[str] = Field(default=None, description="CamelCase reason for the phase (Error, DeadlineExceeded, OOMKilled, NoMetrics...).")
    message: Optional[str] = Field(default=None, description="Details, for example the end of the trial's output.")
    start_time: Optional[str] = Field(default=None, description="When the trial started.")
    completion_time: Optional[str] = Field(default=None, description="When the trial finished.")
    job_name: Optional[str] = Field(default=None, description="The Job running this trial (cluster only).")


class HyperparameterTrial(ApiModel):
    """One trial of a HyperparameterStudy, owned by it."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion", description="kubetune.io/v1alpha1")
    kind: Literal["HyperparameterTrial"] = Field(description="HyperparameterTrial")
    metadata: ObjectMeta
    spec: TrialSpec
    status: Optional[TrialStatus] = None
