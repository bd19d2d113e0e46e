"""params.yaml through bts.params: the project's file loads; each mistake stops with one exact line."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bts.data.features import FeatureSpec
from bts.errors import ConfigError
from bts.params import MODEL_KINDS, FeaturizeParams, Params, TrainParams, flatten, load_params
from tests.conftest import PROJECT

PARAMS_TEXT = (PROJECT / "params.yaml").read_text(encoding="utf-8")
PROJECT_PARAMS = yaml.safe_load(PARAMS_TEXT)
SECTIONS = "data, simulate, clean, featurize, train, registry, monitor"


def write_params(path: Path, mutate: Callable[[dict], object] | None = None) -> Path:
    """A copy of the project's params.yaml at `path`, changed by mutate(params) first."""
    params = copy.deepcopy(PROJECT_PARAMS)
    if mutate is not None:
        mutate(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def params_path(tmp_path: Path) -> Path:
    return tmp_path / "params.yaml"


def test_the_project_params_load(params_path):
    params = load_params(write_params(params_path))
    assert isinstance(params, Params)
    assert params.model_dump(mode="json") == PROJECT_PARAMS


def test_the_project_params_file_itself_loads():
    assert load_params(PROJECT / "params.yaml").model_dump(mode="json") == PROJECT_PARAMS


def rename(section: str, old: str, new: str) -> Callable[[dict], None]:
    def mutate(params: dict) -> None:
        parent = params
        for part in section.split("."):
            parent = parent[part]
        parent[new] = parent.pop(old)

    return mutate


def set_value(dotted: str, value: object) -> Callable[[dict], None]:
    def mutate(params: dict) -> None:
        *parents, key = dotted.split(".")
        parent = params
        for part in parents:
            parent = parent[part]
        parent[key] = value

    return mutate


MISTAKES = {
    "misspelled dirt key": (
        rename("simulate.dirt", "missing_value", "missing_valu"),
        "simulate.dirt.missing_valu: unknown key (allowed: missing_value, sentinel, duplicate_id, out_of_range, bad_time, "
        "out_of_order, silent_station_days, silent_hours)",
    ),
    "unknown key in a section": (
        rename("simulate", "dirt", "dirtt"),
        "simulate.dirtt: unknown key (allowed: seed, start_date, days, stations, parameters, dirt)",
    ),
    "sources as a string": (set_value("data.sources", "simulated"), "data.sources: Input should be a valid list, got 'simulated'"),
    "sources null": (set_value("data.sources", None), "data.sources: Input should be a valid list, got None"),
    "sources not strings": (set_value("data.sources", [42]), "data.sources[0]: Input should be a valid string, got 42"),
    "sources empty": (
        set_value("data.sources", []),
        "data.sources: needs at least 1 item(s), got []",
    ),
    "negative alpha": (set_value("train.alpha", -1), "train.alpha: Input should be greater than or equal to 0, got -1"),
    "gate direction": (
        set_value("registry.gate_direction", "minimize"),
        "registry.gate_direction: Input should be 'min' or 'max', got 'minimize'",
    ),
    "unknown model": (
        set_value("train.model", "xgb"),
        "train.model: Input should be 'elasticnet', 'ridge', 'hist_gradient_boosting' or 'random_forest', got 'xgb'",
    ),
    "fractions leave no training data": (
        lambda params: params["featurize"].update(valid_fraction=0.5, test_fraction=0.5),
        "featurize: valid_fraction + test_fraction must be below 1",
    ),
    "l1_ratio above 1": (set_value("train.l1_ratio", 1.5), "train.l1_ratio: Input should be less than or equal to 1, got 1.5"),
    "unknown target": (set_value("train.target", "level"), "train.target: Input should be 'change' or 'scaled_change', got 'level'"),
    "negative shrinkage folds": (
        set_value("train.shrinkage_folds", -1),
        "train.shrinkage_folds: Input should be greater than or equal to 0, got -1",
    ),
    "scale window of one reading": (
        set_value("featurize.scale_window", 1),
        "featurize.scale_window: Input should be greater than or equal to 2, got 1",
    ),
    "calendar as a word": (
        set_value("featurize.calendar", "sometimes"),
        "featurize.calendar: Input should be a valid boolean, unable to interpret input, got 'sometimes'",
    ),
    "missing section": (lambda params: params.pop("clean"), "clean: missing"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_stops_with_one_exact_line(mistake, params_path):
    mutate, message = MISTAKES[mistake]
    write_params(params_path, mutate)
    with pytest.raises(ConfigError) as raised:
        load_params(params_path)
    assert str(raised.value) == f"{params_path}: {message}"


def test_several_mistakes_name_the_first_and_count_the_others(params_path):
    def mutate(params: dict) -> None:
        params["train"]["alpha"] = -1
        params["train"]["l1_ratio"] = 1.5
        params["registry"]["gate_direction"] = "minimize"

    write_params(params_path, mutate)
    with pytest.raises(ConfigError) as raised:
        load_params(params_path)
    assert str(raised.value) == f"{params_path}: train.alpha: Input should be greater than or equal to 0, got -1 (and 2 more problem(s))"


def test_a_file_that_is_not_yaml(params_path):
    params_path.write_text("train: [unclosed\n  model: x: y\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_params(params_path)
    assert str(raised.value) == f"{params_path}: not valid YAML (line 2, column 8: expected ',' or ']', but got ':')"


@pytest.mark.parametrize(
    ("old", "new", "twice"),
    [
        ("  seed: 42\n  alpha: 0.01\n", "  seed: 42\n  alpha: 0.01\n  alpha: 0.02\n", "  alpha: "),  # in a section
        ("clean:\n", "train:\n  model: ridge\nclean:\n", "train:"),  # a whole section twice
    ],
)
def test_a_key_given_twice_is_named_with_its_line(params_path, old, new, twice):
    text = PARAMS_TEXT.replace(old, new, 1)
    assert text != PARAMS_TEXT
    params_path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_params(params_path)
    line = [n for n, content in enumerate(text.splitlines(), 1) if content.startswith(twice)][-1]  # the later one is named
    key = twice.strip().rstrip(":")
    assert (
        str(raised.value)
        == f"{params_path}: not valid YAML (line {line}, column {len(twice) - len(twice.lstrip()) + 1}: key {key!r} given twice)"
    )


def test_an_empty_file(params_path):
    params_path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_params(params_path)
    assert str(raised.value) == f"{params_path}: empty file; it needs the sections {SECTIONS}"


def test_a_file_that_is_a_yaml_list(params_path):
    params_path.write_text("- data\n- train\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_params(params_path)
    assert str(raised.value) == f"{params_path}: expected a mapping of sections ({SECTIONS}), got list"


def test_a_missing_file(tmp_path):
    missing = tmp_path / "nowhere" / "params.yaml"
    with pytest.raises(ConfigError) as raised:
        load_params(missing)
    assert str(raised.value) == f"{missing}: cannot read params (No such file or directory)"


FEATURIZE_MISTAKES = {
    "no lags": {"n_lags": 0},
    "fractions leave no training data": {"valid_fraction": 0.5, "test_fraction": 0.5},
    "misspelled key": {"scale_windw": 30},
    "a station id that is text": {"holdout_stations": [1, "two"]},
    "two mistakes": {"horizon": 0, "calendar": "sometimes"},
}


@pytest.mark.parametrize("mistake", list(FEATURIZE_MISTAKES))
def test_a_feature_spec_names_a_mistake_as_params_yaml_does(mistake, params_path):
    """The spec is the featurize section, checked by the same model: the same line, without the file."""
    changes = FEATURIZE_MISTAKES[mistake]
    write_params(params_path, lambda params: params["featurize"].update(changes))
    with pytest.raises(ConfigError) as from_file:
        load_params(params_path)
    with pytest.raises(ConfigError) as from_spec:
        FeatureSpec(**{**PROJECT_PARAMS["featurize"], **changes})
    assert str(from_file.value) == f"{params_path}: {from_spec.value}"
    assert str(from_spec.value).startswith("featurize")


def test_a_featurize_key_left_out_takes_its_one_default(params_path):
    write_params(params_path, lambda params: params.update(featurize={"n_lags": 3}))
    featurize = load_params(params_path).featurize
    assert featurize == FeaturizeParams(n_lags=3)
    assert featurize.model_dump() == {**FeatureSpec().model_dump(), "n_lags": 3}


def test_flatten_joins_nested_keys_with_dots():
    nested = {"train": {"model": "ridge", "ridge": {"alpha": 1.0}, "seeds": [1, 2]}, "data": {"sources": ["simulated"]}, "top": 3}
    assert flatten(nested) == {
        "train.model": "ridge",
        "train.ridge.alpha": 1.0,
        "train.seeds": [1, 2],
        "data.sources": ["simulated"],
        "top": 3,
    }


def test_flatten_of_an_empty_dict_is_empty():
    assert flatten({}) == {}
    assert flatten({"section": {}}) == {}  # an empty section has no leaf, so no name


def test_flatten_keeps_dots_inside_keys():
    assert flatten({"a.b": {"c.d": 1, "e": {"f": None}}}) == {"a.b.c.d": 1, "a.b.e.f": None}


def test_flatten_names_every_project_param_as_params_yaml_does():
    flat = flatten(load_params(PROJECT / "params.yaml").model_dump())
    assert flat["train.ridge.alpha"] == PROJECT_PARAMS["train"]["ridge"]["alpha"]
    assert flat["simulate.dirt.missing_value"] == PROJECT_PARAMS["simulate"]["dirt"]["missing_value"]
    assert flat["featurize.n_lags"] == PROJECT_PARAMS["featurize"]["n_lags"]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_model_params_are_those_of_the_chosen_kind(kind, params_path):
    params = load_params(write_params(params_path, set_value("train.model", kind)))
    assert isinstance(params.train, TrainParams)
    train = PROJECT_PARAMS["train"]
    common = {
        "model": kind,
        "target": train["target"],
        "shrinkage_folds": train["shrinkage_folds"],
        "interval_coverage": train["interval_coverage"],
        "calibration_folds": train["calibration_folds"],
        "seed": train["seed"],
    }
    expected = {**common, "alpha": train["alpha"], "l1_ratio": train["l1_ratio"]} if kind == "elasticnet" else {**common, kind: train[kind]}
    assert params.train.model_params() == expected


def test_model_params_ignore_the_other_kinds_sections(params_path):
    params = load_params(write_params(params_path, set_value("train.model", "ridge")))
    assert set(params.train.model_params()) == {
        "model",
        "target",
        "shrinkage_folds",
        "interval_coverage",
        "calibration_folds",
        "seed",
        "ridge",
    }


def test_run_params_are_the_chosen_model_and_featurize_params_flat(params_path):
    params = load_params(write_params(params_path, set_value("train.model", "ridge")))
    featurize = PROJECT_PARAMS["featurize"]
    assert params.run_params() == {
        "train.model": "ridge",
        "train.target": PROJECT_PARAMS["train"]["target"],
        "train.shrinkage_folds": PROJECT_PARAMS["train"]["shrinkage_folds"],
        "train.interval_coverage": PROJECT_PARAMS["train"]["interval_coverage"],
        "train.calibration_folds": PROJECT_PARAMS["train"]["calibration_folds"],
        "train.seed": PROJECT_PARAMS["train"]["seed"],
        "train.ridge.alpha": PROJECT_PARAMS["train"]["ridge"]["alpha"],
        **{f"featurize.{key}": value for key, value in featurize.items()},
    }


@pytest.mark.parametrize(
    ("addition", "message"),
    [
        ("trainn: {alpha: 1}\n", "params.yaml: trainn: unknown key (allowed: data, simulate, clean, featurize, train, registry, monitor)"),
        ("train: [\n", "params.yaml: not valid YAML (line "),
    ],
    ids=["unknown section", "yaml error"],
)
def test_bts_params_checks_the_whole_file_in_one_line_before_dvc_reads_it(tmp_path, monkeypatch, capsys, addition, message) -> None:
    """`make repro` runs `bts params` first: DVC reruns no stage for a section no stage reads, and words YAML errors its own way."""
    from bts.cli import main

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["params"]) == 0
    assert capsys.readouterr().out == "params.yaml: valid (data, simulate, clean, featurize, train, registry, monitor)\n"
    with open(tmp_path / "params.yaml", "a") as handle:
        handle.write(addition)
    assert main(["params"]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"bts: error: {tmp_path}/{message}") and error.count("\n") == 1
