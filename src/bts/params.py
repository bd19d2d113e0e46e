"""params.yaml, the one home of every tunable, read through one typed layer and validated once.

Each section is a pydantic model that forbids unknown keys, so a misspelled
key or a value of the wrong kind stops with one line naming the key and what
is allowed, before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bts.errors import ConfigError

PARAMS_FILE = Path("params.yaml")
MODEL_KINDS = ("elasticnet", "ridge", "hist_gradient_boosting", "random_forest")
TARGETS = ("change", "scaled_change")  # what the model learns: the change over persistence, or that change in the series' step scale

Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
Identifier = Annotated[int, Field(ge=0, le=2**63 - 1)]
NonEmpty = Annotated[str, Field(min_length=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(Section):
    sources: list[NonEmpty] = Field(min_length=1, description="'simulated' and/or paths of real exports under data/external")


class DirtParams(Section):
    missing_value: Fraction = 0.0
    sentinel: Fraction = 0.0
    duplicate_id: Fraction = 0.0
    out_of_range: Fraction = 0.0
    bad_time: Fraction = 0.0
    out_of_order: Fraction = 0.0
    silent_station_days: Fraction = 0.0
    silent_hours: Annotated[float, Field(ge=0, lt=24)] = 3.0


class SimulateParams(Section):
    seed: Identifier
    start_date: Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    days: Annotated[int, Field(ge=1, le=366)]
    stations: list[Identifier] = Field(min_length=1)
    parameters: list[Identifier] = Field(min_length=1)
    dirt: DirtParams = DirtParams()


class CleanParams(Section):
    gap_threshold_minutes: Annotated[float, Field(gt=0)]


class FeaturizeParams(Section):
    """The featurize section; bts.data.features.FeatureSpec is these fields, defaults and checks, plus the columns they give."""

    n_lags: Annotated[int, Field(ge=1, le=100)] = 6
    # Steps ahead the model forecasts, each a target of its own: a list of distinct steps, in increasing order.
    horizons: list[Annotated[int, Field(ge=1, le=100)]] = Field(default=[1, 5, 15], min_length=1, max_length=10)
    valid_fraction: OpenFraction = 0.15
    test_fraction: OpenFraction = 0.15
    holdout_stations: list[Identifier] = []
    scale_window: Annotated[int, Field(ge=2, le=10_000)] = 30
    calendar: bool = False

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> FeaturizeParams:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must be below 1")
        if any(later <= earlier for earlier, later in zip(self.horizons, self.horizons[1:], strict=False)):
            raise ValueError(f"horizons must be distinct steps in increasing order, got {self.horizons}")
        return self


class RidgeParams(Section):
    alpha: Annotated[float, Field(ge=0)]


class HistGradientBoostingParams(Section):
    max_iter: Annotated[int, Field(ge=1)]
    learning_rate: Annotated[float, Field(gt=0, le=1)]
    max_leaf_nodes: Annotated[int, Field(ge=2)]


class RandomForestParams(Section):
    n_estimators: Annotated[int, Field(ge=1)]
    max_depth: Annotated[int, Field(ge=1)] | None
    min_samples_leaf: Annotated[int, Field(ge=1)]


class TrainParams(Section):
    experiment: NonEmpty
    model: Literal[MODEL_KINDS]  # type: ignore[valid-type]
    target: Literal[TARGETS] = "scaled_change"  # type: ignore[valid-type]
    shrinkage_folds: Annotated[int, Field(ge=0, le=100)] = 0
    interval_coverage: OpenFraction = 0.9
    calibration_folds: Annotated[int, Field(ge=0, le=100)] = 2
    seed: Identifier
    alpha: Annotated[float, Field(ge=0)]
    l1_ratio: Fraction
    ridge: RidgeParams
    hist_gradient_boosting: HistGradientBoostingParams
    random_forest: RandomForestParams

    def model_params(self) -> dict[str, Any]:
        """The params that configure the chosen model (the other kinds' sections are ignored by it)."""
        common = {
            "model": self.model,
            "target": self.target,
            "shrinkage_folds": self.shrinkage_folds,
            "interval_coverage": self.interval_coverage,
            "calibration_folds": self.calibration_folds,
            "seed": self.seed,
        }
        if self.model == "elasticnet":
            return {**common, "alpha": self.alpha, "l1_ratio": self.l1_ratio}
        return {**common, self.model: getattr(self, self.model).model_dump()}


class RegistryParams(Section):
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    gate_metric: NonEmpty
    gate_direction: Literal["min", "max"]
    license: NonEmpty


class MonitorParams(Section):
    psi_threshold: Annotated[float, Field(gt=0)]
    ks_p_value: OpenFraction
    min_rows: Annotated[int, Field(ge=1)]
    ignore_features: list[NonEmpty] = []
    skill_threshold: Annotated[float, Field(le=1)]


class Params(Section):
    data: DataParams
    simulate: SimulateParams
    clean: CleanParams
    featurize: FeaturizeParams
    train: TrainParams
    registry: RegistryParams
    monitor: MonitorParams

    def run_params(self) -> dict[str, object]:
        """The params a training run logs and its model depends on, flat (`train.alpha`, `featurize.n_lags`), each once."""
        return flatten({"train": self.train.model_params(), "featurize": self.featurize.model_dump()})


def describe_problems(exc: ValidationError, model: type[BaseModel] = Params, section: str = "") -> str:
    """A ValidationError of model (params.yaml's `section` when given) as one line: the first wrong key, what is wrong
    with it, and how many other problems there are."""
    errors = exc.errors()
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{_describe(errors[0], model, section)}{more}"


def _describe(error: dict, model: type[BaseModel], section: str) -> str:
    """One pydantic error as 'key: what is wrong (what is allowed)', the key as params.yaml names it."""
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
    key = f"{section}{path}".lstrip(".") or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = model
        for part in error["loc"][:-1]:
            annotation = parent.model_fields[str(part)].annotation if isinstance(part, str) else None
            parent = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            if parent is None:
                break
        allowed = f" (allowed: {', '.join(parent.model_fields)})" if parent else ""
        return f"{key}: unknown key{allowed}"
    if kind == "missing":
        return f"{key}: missing"
    if kind == "too_short":
        return f"{key}: needs at least {error['ctx']['min_length']} item(s), got {error.get('input')!r}"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(error.get("input"), dict):
        return f"{key}: {message}"
    given = repr(error.get("input"))
    given = given if len(given) <= 60 else given[:57] + "..."
    return f"{key}: {message}, got {given}"


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last one, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(problem=f"key {key!r} given twice", problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Every param of params.yaml, validated; a ConfigError names the first wrong key (and counts the others)."""
    try:
        raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read params ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read params (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: not valid YAML ({where}{getattr(exc, 'problem', None) or exc})") from None
    if raw is None:
        raise ConfigError(f"{path}: empty file; it needs the sections {', '.join(Params.model_fields)}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(Params.model_fields)}), got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_problems(exc)}") from None


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """{'train': {'ridge': {'alpha': 1}}} -> {'train.ridge.alpha': 1}: the names params.yaml, `dvc exp run -S` and MLflow use."""
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
