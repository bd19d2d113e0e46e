"""Pareto front, weighted scores and ranking of `bts compare` on a few runs; data versions, its table and its width,
plot labels and argument checks."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from bts.cli import build_parser, main
from bts.errors import BtsError, ConfigError
from bts.lifecycle.compare import (
    PROBED_RUNS,
    Comparison,
    SearchedRuns,
    axis_label,
    check_plot,
    compare,
    comparison_from_args,
    data_versions,
    front_figure,
    pareto_front,
    parse_metrics,
    parse_pairs,
    parse_weights,
    probed_runs,
    rank_runs,
    ranked_on,
    result_document,
    search_filter,
    unique_name,
    varying_params,
    weighted_scores,
    workspace_features_md5,
)
from bts.lifecycle.compare_table import Column, fit_columns, format_table, metric_headers, short_param_names

MIN_MIN = {"rmse": "min", "seconds": "min"}


def frame(rows: dict[str, tuple[float, ...]], columns: tuple[str, ...] = ("rmse", "seconds")) -> list[dict[str, Any]]:
    """Runs named by run_id with these metric values, as fetch_runs gives them."""
    return [{"run_id": name, **dict(zip(columns, values, strict=True))} for name, values in rows.items()]


def front_of(runs: list[dict[str, Any]], directions: dict[str, str]) -> set[str]:
    return {run["run_id"] for run, on_front in zip(runs, pareto_front(runs, directions), strict=True) if on_front}


def brute_force_front(values: np.ndarray) -> np.ndarray:
    """Front of rows where smaller is better in every column, by comparing every pair."""
    return np.array([not any((other <= row).all() and (other < row).any() for other in values) for row in values])


def test_a_run_worse_on_every_metric_is_dominated() -> None:
    runs = frame({"good": (1.0, 1.0), "bad": (2.0, 2.0)})
    assert front_of(runs, MIN_MIN) == {"good"}


def test_a_run_equal_on_one_metric_and_worse_on_another_is_dominated() -> None:
    runs = frame({"good": (1.0, 1.0), "slower": (1.0, 3.0)})
    assert front_of(runs, MIN_MIN) == {"good"}


def test_trade_offs_are_all_on_the_front() -> None:
    runs = frame({"accurate": (1.0, 9.0), "balanced": (2.0, 5.0), "fast": (3.0, 1.0), "poor": (3.0, 6.0)})
    assert front_of(runs, MIN_MIN) == {"accurate", "balanced", "fast"}


def test_identical_runs_do_not_dominate_each_other() -> None:
    runs = frame({"a": (1.0, 2.0), "twin": (1.0, 2.0), "other": (2.0, 1.0)})
    assert front_of(runs, MIN_MIN) == {"a", "twin", "other"}


def test_identical_runs_leave_the_front_together() -> None:
    runs = frame({"a": (2.0, 2.0), "twin": (2.0, 2.0), "better": (1.0, 1.0)})
    assert front_of(runs, MIN_MIN) == {"better"}


def test_max_direction_prefers_larger_values() -> None:
    runs = frame({"low_skill": (1.0, 0.2), "high_skill": (1.0, 0.8)}, columns=("rmse", "skill"))
    assert front_of(runs, {"rmse": "min", "skill": "max"}) == {"high_skill"}
    assert front_of(runs, {"rmse": "min", "skill": "min"}) == {"low_skill"}


def test_front_only_uses_the_metrics_given() -> None:
    runs = frame({"a": (1.0, 9.0), "b": (2.0, 1.0)})
    assert front_of(runs, {"rmse": "min"}) == {"a"}


def test_front_keeps_the_order_of_the_runs() -> None:
    runs = frame({"b": (2.0, 2.0), "a": (1.0, 1.0), "c": (1.0, 3.0)})
    assert pareto_front(runs, MIN_MIN) == [False, True, False]


def test_front_of_no_runs_is_empty() -> None:
    assert pareto_front(frame({}), MIN_MIN) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_front_matches_pairwise_comparison(seed: int) -> None:
    # Few distinct values on three metrics make many ties and equal coordinates.
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, size=(60, 3)).astype(float)
    runs = frame({f"r{i}": tuple(row) for i, row in enumerate(values.tolist())}, columns=("a", "b", "c"))
    found = np.array(pareto_front(runs, {"a": "min", "b": "max", "c": "min"}))
    assert (found == brute_force_front(values * [1, -1, 1])).all()


def test_scores_are_one_for_the_best_and_zero_for_the_worst_of_each_metric() -> None:
    runs = frame({"best": (1.0, 1.0), "middle": (2.0, 3.0), "worst": (3.0, 5.0)})
    scores = weighted_scores(runs, MIN_MIN, {"rmse": 1.0, "seconds": 1.0})
    assert scores == pytest.approx([1.0, 0.5, 0.0])


def test_max_direction_scores_the_largest_value_one() -> None:
    runs = frame({"a": (0.2,), "b": (0.6,), "c": (1.0,)}, columns=("skill",))
    assert weighted_scores(runs, {"skill": "max"}, {"skill": 1.0}) == pytest.approx([0.0, 0.5, 1.0])


def test_weights_are_shares_of_their_sum() -> None:
    runs = frame({"accurate": (1.0, 5.0), "fast": (3.0, 1.0)})
    scores = weighted_scores(runs, MIN_MIN, {"rmse": 3.0, "seconds": 1.0})
    assert scores == pytest.approx([0.75, 0.25])


def test_a_constant_metric_gives_every_run_its_full_weight() -> None:
    runs = frame({"a": (1.0, 7.0), "b": (2.0, 7.0)})
    scores = weighted_scores(runs, MIN_MIN, {"rmse": 1.0, "seconds": 1.0})
    assert scores == pytest.approx([1.0, 0.5])
    assert not any(math.isnan(score) for score in scores)


def test_ranking_orders_by_score_then_run_id() -> None:
    runs = frame({"c": (1.0, 2.0), "b": (2.0, 1.0), "a": (3.0, 3.0), "d": (1.5, 1.5)})
    ranked = rank_runs(runs, MIN_MIN, {"rmse": 1.0, "seconds": 1.0})
    # b, c and d all score 0.75 (d by another sum of fractions); the tie goes to the smaller run id.
    assert [run["run_id"] for run in ranked] == ["b", "c", "d", "a"]
    assert [run["rank"] for run in ranked] == [1, 2, 3, 4]
    assert [run["pareto"] for run in ranked] == [True, True, True, False]


def test_every_permutation_of_rows_gives_the_same_ranking() -> None:
    rows = {"a": (1.0, 4.0), "b": (4.0, 1.0), "c": (2.5, 2.5), "d": (2.0, 3.0), "e": (3.0, 2.0)}
    rankings = {
        tuple(run["run_id"] for run in rank_runs(frame(dict(order)), MIN_MIN, {"rmse": 1.0, "seconds": 1.0}))
        for order in itertools.permutations(rows.items())
    }
    assert rankings == {("a", "b", "c", "d", "e")}


def test_metrics_keep_their_order_and_direction() -> None:
    assert parse_metrics(" test.h1.rmse:min , test.h5.skill:MAX") == {"test.h1.rmse": "min", "test.h5.skill": "max"}
    assert parse_metrics("test.h15.coverage:max,test_by_parameter.122.h1.skill:max") == {
        "test.h15.coverage": "max",
        "test_by_parameter.122.h1.skill": "max",
    }


def test_without_metrics_the_ranking_waits_for_the_runs_horizons_and_keeps_the_weights_given() -> None:
    parser = build_parser()
    comparison = comparison_from_args(parser.parse_args(["compare", "--weights", "2,1,1", "--plot", "front.png"]))
    assert (comparison.directions, comparison.default, comparison.weights_text) == ({}, True, "2,1,1")
    assert not comparison.resolved
    explicit = comparison_from_args(parser.parse_args(["compare", "--metrics", "test.h1.rmse:min"]))
    assert explicit.resolved and not explicit.default


@pytest.mark.parametrize("text", ["test.h1.rmse", "test.h1.rmse:lowest", ":min", "test.h1.rmse:min,", "a:min,a:max"])
def test_bad_metrics_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--metrics"):
        parse_metrics(text)


def test_weights_default_to_equal() -> None:
    assert parse_weights(None, ["a", "b"]) == {"a": 1.0, "b": 1.0}
    assert parse_weights("2, 0.5", ["a", "b"]) == {"a": 2.0, "b": 0.5}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3", "3 weights for 2 metrics"),
        ("1,x", "not a comma list of numbers"),
        ("1,-1", ">= 0"),
        ("0,0", "not all 0"),
        ("1,nan", "finite"),
    ],
)
def test_bad_weights_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_weights(text, ["a", "b"])


def test_pairs_need_an_equals_sign() -> None:
    assert parse_pairs(["train.model=ridge", "note=a=b"], "--param") == {"train.model": "ridge", "note": "a=b"}
    with pytest.raises(ConfigError, match="--tag: 'sweep' is not KEY=VALUE"):
        parse_pairs(["sweep"], "--tag")


def test_filter_quotes_keys_and_values() -> None:
    text = search_filter("metrics.`test.h1.rmse` < 1", {"dvc.exp_name": "it's"}, {"train.model": "ridge"})
    assert text == "metrics.`test.h1.rmse` < 1 AND tags.`dvc.exp_name` = \"it's\" AND params.`train.model` = 'ridge'"
    assert search_filter(None, {}, {}) == ""
    with pytest.raises(ConfigError, match="both kinds of quote"):
        search_filter(None, {"note": 'it\'s "x"'}, {})
    with pytest.raises(ConfigError, match="backtick"):
        search_filter(None, {}, {"a`b": "x"})


def test_top_and_plot_arguments_are_checked() -> None:
    parser = build_parser()
    with pytest.raises(ConfigError, match="--top"):
        comparison_from_args(parser.parse_args(["compare", "--top", "0"]))
    with pytest.raises(ConfigError, match="--plot"):
        comparison_from_args(parser.parse_args(["compare", "--metrics", "test.h1.rmse:min", "--plot", "front.png"]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics", "test.h1.rmse"], "bts: error: --metrics: 'test.h1.rmse' is not NAME:min or NAME:max"),
        (["--metrics", "test.h1.rmse:min,test.h1.skill:max", "--weights", "1,2,3"], "bts: error: --weights: 3 weights for 2 metrics"),
        (["--param", "train.model"], "bts: error: --param: 'train.model' is not KEY=VALUE"),
    ],
)
def test_argument_errors_exit_1_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", *argv]) == 1
    error = capsys.readouterr().err
    assert error.startswith(message)
    assert error.count("\n") == 1


def test_varying_params_are_those_with_two_values_or_missing_somewhere() -> None:
    runs = rows(
        {
            "run_id": ["a", "b", "c", "evaluation-only"],
            "has_params": [True, True, True, False],
            "params.train.alpha": ["0.1", "0.3", None, None],
            "params.train.model": ["elasticnet", "elasticnet", "elasticnet", None],
            "params.train.ridge.alpha": [None, None, "1.0", None],
            "params.featurize.n_lags": [None, None, None, None],
            "test.h1.rmse": [1.0, 2.0, 3.0, 4.0],
        }
    )
    # train.model is the same wherever it was logged: the run that logged no params at all does not make it differ
    assert varying_params(runs) == ["params.train.alpha", "params.train.ridge.alpha"]
    assert varying_params(runs[:1]) == []
    assert varying_params([runs[0], runs[3]]) == []
    assert varying_params([]) == []


def test_ranked_on_states_each_metric_with_its_direction() -> None:
    quality = Comparison({"test.h1.rmse": "min", "test.h1.skill": "max"}, {"test.h1.rmse": 1.0, "test.h1.skill": 1.0}, "")
    assert ranked_on(quality) == "test.h1.rmse (lower is better) and test.h1.skill (higher is better), equal weights"
    skills = Comparison(dict.fromkeys(["test.h1.skill", "test.h5.skill", "test.h15.skill"], "max"), {}, "", default=True)
    skills = Comparison(skills.directions, dict.fromkeys(skills.directions, 1.0), "", default=True)
    assert ranked_on(skills) == (
        "test skill per horizon: test.h1.skill, test.h5.skill and test.h15.skill (higher is better), equal weights"
    )
    weighted = Comparison(skills.directions, dict(zip(skills.directions, [3.0, 1.0, 1.0], strict=True)), "", default=True)
    assert ranked_on(weighted) == (
        "test skill per horizon: test.h1.skill (weight 3), test.h5.skill (weight 1) and test.h15.skill (weight 1), higher is better"
    )
    assert ranked_on(Comparison({"a": "min", "b": "min"}, {"a": 1.0, "b": 1.0}, "")) == "a and b (lower is better), equal weights"
    three = Comparison({"a": "min", "b": "max", "c": "min"}, {"a": 2.0, "b": 1.0, "c": 0.5}, "")
    assert ranked_on(three) == "a (lower is better, weight 2), b (higher is better, weight 1) and c (lower is better, weight 0.5)"
    assert ranked_on(Comparison({"a": "max"}, {"a": 1.0}, "")) == "a (higher is better)"


def rows(columns: dict[str, list]) -> list[dict[str, Any]]:
    """Columns of equal length as one dict per run."""
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


QUALITY = Comparison({"test.h1.rmse": "min", "test.h1.skill": "max"}, {"test.h1.rmse": 1.0, "test.h1.skill": 1.0}, "")
DATA = "d" * 32  # the workspace's features md5 in these tests
OTHER = "0" * 32


def compared(runs: list[dict[str, Any]], comparison: Comparison = QUALITY, workspace_md5: str | None = DATA, why: str = "") -> dict:
    """What `compare` makes of these runs, as fetch_runs would give them."""
    with mock.patch("bts.lifecycle.compare.open_runs", return_value=contextlib.nullcontext(SearchedRuns(runs, "1"))):
        return compare("e", comparison, workspace_md5, why)


def sample_runs() -> list[dict[str, Any]]:
    """Three runs on the workspace's data with both metrics, and one without test.h1.skill."""
    return rows(
        {
            "run_id": ["a" * 32, "b" * 32, "c" * 32, "e" * 32],
            "run_name": ["ridge-1", "enet-2", None, "unscored"],
            "dvc_exp_name": ["exp-1", None, "exp-3", None],
            "features_md5": [DATA] * 4,
            "dirty": ["false", "true", None, "false"],
            "test.h1.rmse": [0.5, 0.7, 0.9, 0.4],
            "test.h1.skill": [0.6, 0.4, 0.2, math.nan],
            "has_params": [True] * 4,
            "params.train.alpha": [None, "0.3", "0.01", None],
            "params.train.model": ["ridge", "elasticnet", "elasticnet", "ridge"],
        }
    )


def ranked_result(filter_string: str = "") -> dict:
    return compared(sample_runs(), Comparison(QUALITY.directions, QUALITY.weights, filter_string))


def test_table_states_the_data_version_the_ranking_metrics_and_the_params_that_differ() -> None:
    result = ranked_result("tags.`sweep` = 'a'")
    assert format_table(result, top=2, width=120).splitlines() == [
        "experiment 'e': 3 runs on the workspace's data, features md5 dddddddddddd (dvc.lock)",
        "ranked on test.h1.rmse (lower is better) and test.h1.skill (higher is better), equal weights",
        "filter: tags.`sweep` = 'a'",
        "1 run without all metrics was left out",
        "params that differ between them: train.alpha, train.model",
        "Pareto front: 1 run, marked *; 1 of them in the top 2",
        "",
        "rank  run              features md5  dirty  h1.rmse  h1.skill   score  front  model       alpha",
        "----  ---------------  ------------  -----  -------  --------  ------  -----  ----------  -----",
        "   1  exp-1 aaaaaaaa   dddddddddddd  no         0.5       0.6  1.0000  *      ridge       -",
        "   2  enet-2 bbbbbbbb  dddddddddddd  yes        0.7       0.4  0.5000         elasticnet  0.3",
    ]


def test_table_without_differing_params_says_so_and_counts_runs_without_params() -> None:
    runs = [{key: value for key, value in run.items() if not key.startswith("params.")} for run in sample_runs()]
    result = compared(runs)
    lines = format_table(result, top=1, width=120).splitlines()
    assert lines[3] == "no param differs between them"
    assert lines[6] == "rank  run             features md5  dirty  h1.rmse  h1.skill   score  front"
    runs[1]["has_params"] = False
    assert format_table(compared(runs), top=1, width=120).splitlines()[3] == "no param differs between them (1 run logged no params)"


def test_params_no_run_shown_sets_are_named_but_kept_out_of_the_table() -> None:
    runs = sample_runs()
    runs[1]["params.train.alpha"] = None  # only the 3rd run sets it
    result = compared(runs)
    lines = format_table(result, top=2, width=120).splitlines()
    assert lines[3:6] == [
        "params that differ between them: train.alpha, train.model",
        "not set in any run shown, so not in the table: train.alpha",
        "Pareto front: 1 run, marked *; 1 of them in the top 2",
    ]
    assert lines[7].split()[-2:] == ["front", "model"]
    assert "alpha" in format_table(result, top=3, width=120).splitlines()[6]


def test_json_holds_each_run_data_version_dirty_flag_and_params_with_null_where_a_run_lacks_one() -> None:
    result = ranked_result()
    document = result_document(result)
    assert document["params"] == ["train.alpha", "train.model"]
    assert [run["params"] for run in document["ranking"]] == [
        {"train.alpha": None, "train.model": "ridge"},
        {"train.alpha": "0.3", "train.model": "elasticnet"},
        {"train.alpha": "0.01", "train.model": "elasticnet"},
    ]
    assert [(run["name"], run["features_md5"], run["dirty"]) for run in document["ranking"]] == [
        ("exp-1 aaaaaaaa", DATA, False),
        ("enet-2 bbbbbbbb", DATA, True),
        ("exp-3 cccccccc", DATA, None),
    ]
    assert (document["workspace_features_md5"], document["runs_on_other_data"], document["runs_left_out"]) == (DATA, 0, 1)


def on_data(versions: dict[str, str | None], dirty: str = "false") -> list[dict[str, Any]]:
    """One run per name, trained on the data version given, with a metric that ranks them in the order given."""
    return [
        {
            "run_id": f"{index:x}" * 32,
            "run_name": "hist_gradient_boosting-41214a8",  # one name: the model trained at one commit, several times
            "dvc_exp_name": None,
            "features_md5": md5,
            "dirty": dirty,
            "test.h1.rmse": 0.5 + index / 10,
            "test.h1.skill": 0.5 - index / 10,
            "has_params": True,
        }
        for index, md5 in enumerate(versions.values(), start=1)
    ]


def test_runs_on_other_data_are_left_out_and_counted_by_version() -> None:
    runs = on_data({"here": DATA, "other": OTHER, "older": None, "here-too": DATA, "other-too": OTHER, "third": "3" * 32})
    result = compared(runs)
    assert [run["run_id"][0] for run in result["ranked"]] == ["1", "4"]
    assert result["runs_on_other_data"] == [(OTHER, 2), ("3" * 32, 1), (None, 1)]
    assert result["runs_matched"] == 6 and not result["all_data"]
    lines = format_table(result, top=20, width=120).splitlines()
    assert lines[2] == "4 runs on other data left out (2 on 000000000000, 1 on 333333333333, 1 with no md5 recorded): --all-data shows them"
    document = result_document(result)
    assert (document["runs_compared"], document["runs_on_other_data"]) == (2, 4)


def test_all_data_ranks_each_version_on_its_own_the_workspace_first() -> None:
    runs = on_data({"older": None, "other": OTHER, "here": DATA, "other-too": OTHER})
    result = compared(runs, Comparison(QUALITY.directions, QUALITY.weights, "", all_data=True))
    assert [(group["features_md5"], group["workspace"], len(group["ranked"])) for group in result["groups"]] == [
        (DATA, True, 1),
        (OTHER, False, 2),
        (None, False, 1),
    ]
    assert [run["rank"] for run in result["ranked"]] == [1, 1, 2, 1]  # each version ranked on its own
    assert [run["pareto"] for run in result["ranked"]] == [True, True, False, True]
    assert result["runs_on_other_data"] == []
    text = format_table(result, top=20, width=120)
    lines = text.splitlines()
    assert lines[0] == "experiment 'e': 4 runs on 3 data versions, each version ranked on its own"
    assert lines[2] == "data versions (features md5): dddddddddddd (the workspace's): 1 run; 000000000000: 2 runs; none recorded: 1 run"
    table = lines[lines.index("") + 1 :]
    assert [line.split()[3] if line[0] != "-" else "rule" for line in table[2:]] == [
        "dddddddddddd", "rule", "000000000000", "000000000000", "rule", "-",
    ]  # fmt: skip
    assert [version["features_md5"] for version in result_document(result)["data_versions"]] == [DATA, OTHER, None]


def test_every_version_is_ranked_on_its_own_when_no_run_trained_on_the_workspace_data() -> None:
    result = compared(on_data({"other": OTHER, "older": None}))
    assert result["all_data"] and [group["features_md5"] for group in result["groups"]] == [OTHER, None]
    note = "data: no run matched trained on the workspace's data (features md5 dddddddddddd): every data version is shown"
    assert note in format_table(result, top=20, width=120).splitlines()
    outside = compared(on_data({"other": OTHER}), workspace_md5=None, why="no BTS project here")
    assert format_table(outside, top=20, width=120).splitlines()[:3] == [
        "experiment 'e': 1 run on one data version, features md5 000000000000",
        "ranked on test.h1.rmse (lower is better) and test.h1.skill (higher is better), equal weights",
        "data: no BTS project here: every data version is shown",
    ]


def by_horizon(skills: dict[str, dict[int, float]], md5s: dict[str, str | None] | None = None) -> list[dict[str, Any]]:
    """Runs named by run_id with these test skills by horizon, as fetch_runs gives them for the default ranking: every
    row has the skill of every horizon any run has (NaN where it has none); on the workspace's data unless md5s says."""
    horizons = sorted({horizon for values in skills.values() for horizon in values})
    return [
        {
            "run_id": name,
            "run_name": name,
            "dvc_exp_name": None,
            "features_md5": (md5s or {}).get(name, DATA),
            "dirty": "false",
            **{f"test.h{h}.skill": values.get(h, math.nan) for h in horizons},
            "has_params": True,
        }
        for name, values in skills.items()
    ]


DEFAULT = Comparison({}, {}, "", default=True)
SKILLS = ["test.h1.skill", "test.h5.skill", "test.h15.skill"]


def test_the_default_ranks_on_the_test_skill_of_every_horizon_and_keeps_each_horizons_best_on_the_front() -> None:
    runs = by_horizon(
        {
            "short": {1: 0.7, 5: 0.5, 15: 0.2},  # the best at h1
            "long": {1: 0.5, 5: 0.5, 15: 0.4},  # the best at h15
            "even": {1: 0.6, 5: 0.6, 15: 0.3},  # the best at h5, and on average
            "worse": {1: 0.4, 5: 0.4, 15: 0.1},
            "unfinished": {1: 0.9, 5: 0.9},  # no h15 score: left out
        }
    )
    result = compared(runs, DEFAULT)
    comparison = result["comparison"]
    assert comparison.directions == dict.fromkeys(SKILLS, "max") and comparison.weights == dict.fromkeys(SKILLS, 1.0)
    assert [(run["run_id"], run["pareto"]) for run in result["ranked"]] == [
        ("even", True),
        ("long", True),
        ("short", True),
        ("worse", False),
    ]
    lines = format_table(result, top=20, width=120).splitlines()
    assert lines[1] == "ranked on test skill per horizon: test.h1.skill, test.h5.skill and test.h15.skill (higher is better), equal weights"
    assert lines[2] == "1 run without all metrics was left out"
    header = lines[lines.index("") + 1].split()
    assert header[header.index("dirty") + 1 : header.index("score")] == ["h1.skill", "h5.skill", "h15.skill"]  # the split said above
    document = result_document(result)
    assert document["default_metrics"] is True and [metric["name"] for metric in document["metrics"]] == SKILLS
    assert document["ranking"][0]["metrics"] == {"test.h1.skill": 0.6, "test.h5.skill": 0.6, "test.h15.skill": 0.3}


def test_weights_given_with_the_default_are_one_per_horizon() -> None:
    runs = by_horizon({"short": {1: 0.7, 5: 0.1}, "long": {1: 0.5, 5: 0.5}})
    weighted = compared(runs, Comparison({}, {}, "", default=True, weights_text="3,1"))
    assert weighted["comparison"].weights == {"test.h1.skill": 3.0, "test.h5.skill": 1.0}
    assert [run["run_id"] for run in weighted["ranked"]] == ["short", "long"]
    assert [run["run_id"] for run in compared(runs, Comparison({}, {}, "", default=True, weights_text="1,3"))["ranked"]] == [
        "long",
        "short",
    ]
    with pytest.raises(ConfigError, match=r"--weights: 3 weights for 2 metrics \(test.h1.skill, test.h5.skill\)"):
        compared(runs, Comparison({}, {}, "", default=True, weights_text="1,1,1"))


def test_with_all_data_the_default_ranks_on_the_horizons_every_version_forecasts() -> None:
    older = {"old-1": None, "old-2": None}  # runs scored before per-horizon metrics: none of the default's
    runs = by_horizon(
        {"a": {1: 0.6, 5: 0.5}, "b": {1: 0.5, 5: 0.7}, "c": {1: 0.3, 3: 0.4}, "old-1": {}, "old-2": {}},
        {"c": OTHER, **older},
    )
    result = compared(runs, Comparison({}, {}, "", all_data=True, default=True))
    assert list(result["comparison"].directions) == ["test.h1.skill"]  # h5 on the workspace's data, h3 on the other
    assert [(group["features_md5"], [run["run_id"] for run in group["ranked"]]) for group in result["groups"]] == [
        (DATA, ["a", "b"]),
        (OTHER, ["c"]),
    ]
    assert result["runs_left_out"] == 2
    alone = compared(runs, DEFAULT)  # the workspace's data alone: both of its horizons
    assert list(alone["comparison"].directions) == ["test.h1.skill", "test.h5.skill"]


def test_the_default_says_what_to_do_when_the_runs_have_no_horizon_to_rank_on() -> None:
    with pytest.raises(
        BtsError, match=r"none of the 2 runs matched in experiment 'e' on the workspace's data .* has a test skill per horizon "
    ):
        compared(by_horizon({"old-1": {}, "old-2": {}}), DEFAULT)
    apart = by_horizon({"a": {5: 0.5}, "b": {3: 0.4}}, {"b": OTHER})
    with pytest.raises(BtsError, match=r"forecast no horizon in common \(dddddddddddd: h5; 000000000000: h3\): name the metrics"):
        compared(apart, Comparison({}, {}, "", all_data=True, default=True))


def test_the_plot_of_the_default_needs_two_horizons() -> None:
    one = Comparison({"test.h1.skill": "max"}, {"test.h1.skill": 1.0}, "", default=True)
    with pytest.raises(ConfigError, match=r"give at least two in --metrics \(the runs compared forecast one horizon"):
        check_plot("front.png", one)
    check_plot(None, one)
    check_plot("front.png", Comparison(dict.fromkeys(SKILLS[:2], "max"), dict.fromkeys(SKILLS[:2], 1.0), "", default=True))


def test_the_horizons_of_a_database_store_are_read_from_the_newest_finished_runs_of_each_data_version() -> None:
    runs = [(f"{version}-{index}", "FINISHED", index, version) for version in ["a", "b"] for index in range(PROBED_RUNS + 2)]
    runs += [("a-running", "RUNNING", 999, "a"), ("unknown-0", "FINISHED", 1, None)]
    probed = probed_runs(runs)
    newest = [str(index) for index in range(PROBED_RUNS + 1, 1, -1)]
    assert probed == [*(f"a-{i}" for i in newest), *(f"b-{i}" for i in newest), "unknown-0"]  # not the running one, newest as it is


def test_runs_of_one_name_get_unique_names() -> None:
    runs = on_data({"here": DATA, "here-dirty": DATA})
    assert [unique_name(run) for run in runs] == ["hist_gradient_boosting-41214a8 11111111", "hist_gradient_boosting-41214a8 22222222"]
    assert (
        unique_name({"run_id": "f" * 32, "run_name": "hist_gradient_boosting-41214a8", "dvc_exp_name": "ninth-farl"})
        == "ninth-farl ffffffff"
    )
    assert unique_name({"run_id": "f" * 32, "run_name": None, "dvc_exp_name": None}) == "ffffffff"


def test_data_versions_put_the_workspace_first_then_the_most_runs_then_runs_without_one() -> None:
    counts = Counter(run["features_md5"] for run in on_data({"a": "a" * 32, "none": None, "b": "b" * 32, "b2": "b" * 32, "here": DATA}))
    assert data_versions(counts, DATA) == [(DATA, 1), ("b" * 32, 2), ("a" * 32, 1), (None, 1)]
    assert [md5 for md5, _ in data_versions(counts, None)] == ["b" * 32, "a" * 32, DATA, None]


def test_short_param_names_are_the_shortest_ending_that_names_one_param() -> None:
    keys = ["train.alpha", "train.ridge.alpha", "train.hist_gradient_boosting.max_iter", "train.model", "featurize.model"]
    assert short_param_names(keys) == {
        "train.alpha": "train.alpha",
        "train.ridge.alpha": "ridge.alpha",
        "train.hist_gradient_boosting.max_iter": "max_iter",
        "train.model": "train.model",
        "featurize.model": "featurize.model",
    }
    assert short_param_names(["train.model"]) == {"train.model": "model"}


def test_metric_headers_leave_out_a_split_every_metric_shares() -> None:
    assert metric_headers(SKILLS) == dict(zip(SKILLS, ["h1.skill", "h5.skill", "h15.skill"], strict=True))
    assert metric_headers(["test.h1.rmse", "training.seconds"]) == {"test.h1.rmse": "test.h1.rmse", "training.seconds": "training.seconds"}
    assert metric_headers(["test.h1.rmse", "valid.h1.rmse"]) == {"test.h1.rmse": "test.h1.rmse", "valid.h1.rmse": "valid.h1.rmse"}
    assert metric_headers(["training.seconds", "training.cpu_seconds"])["training.seconds"] == "training.seconds"  # no split


def test_columns_that_do_not_fit_are_left_out_and_the_next_ones_tried() -> None:
    kept = Column("rank", ["1"], numeric=True, kept=True)
    wide, narrow, last = Column("model", ["hist_gradient_boosting"]), Column("alpha", ["0.1"]), Column("l1_ratio", ["0.2"])
    assert fit_columns([kept, wide, narrow, last], None) == ([kept, wide, narrow, last], [])
    assert fit_columns([kept, wide, narrow, last], 4 + 2 + 5 + 2 + 8) == ([kept, narrow, last], [wide])
    assert fit_columns([kept, wide, narrow, last], 4 + 2 + 5) == ([kept, narrow], [wide, last])
    assert fit_columns([kept, wide], 2) == ([kept], [wide])  # the kept columns stay, however narrow the width


def many_params_result() -> dict:
    """Six runs on the workspace's data, like the walkthrough's: a long run name and many params with long keys."""
    runs = on_data({f"run-{i}": DATA for i in range(6)})
    models = ["hist_gradient_boosting", *["elasticnet"] * 5]
    for index, (run, model) in enumerate(zip(runs, models, strict=True)):
        run["dvc_exp_name"] = None if index == 0 else f"ninth-far{index}"
        run["has_params"] = True
        run["params.train.model"] = model
        run["params.train.alpha"] = None if index == 0 else f"0.{index}"
        run["params.train.l1_ratio"] = None if index == 0 else "0.5"
        for key in ["learning_rate", "max_iter", "max_leaf_nodes"]:
            run[f"params.train.hist_gradient_boosting.{key}"] = "15" if index == 0 else None
    return compared(runs)


@pytest.mark.parametrize("width", [70, 80, 100, 120, 200])
def test_every_line_fits_the_width_and_the_ranking_stays(width: int) -> None:
    text = format_table(many_params_result(), top=20, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    header = next(line for line in text.splitlines() if line.startswith("rank  run"))
    assert header.split()[:2] == ["rank", "run"] and {"h1.rmse", "h1.skill", "score", "front"} <= set(header.split())
    assert sum(line.startswith("   ") for line in text.splitlines()) == 6  # every row, its name cut if need be


def test_at_120_columns_the_params_that_do_not_fit_are_named_and_wide_shows_every_column() -> None:
    result = many_params_result()
    lines = format_table(result, top=20, width=120).splitlines()
    header = lines[lines.index("") + 1].split()
    assert header == ["rank", "run", "features", "md5", "dirty", "h1.rmse", "h1.skill", "score", "front", "alpha", "l1_ratio"]
    assert lines[lines.index("") - 1] == "not shown for width: model, learning_rate, max_iter, max_leaf_nodes (--wide shows every column)"
    assert lines[lines.index("") + 3].startswith("   1  hist_gradient_boosting-41214a8 11111111  dddddddddddd  no ")
    wide = format_table(result, top=20, width=120, wide=True).splitlines()
    assert wide[wide.index("") + 1].split()[9:] == ["model", "alpha", "l1_ratio", "learning_rate", "max_iter", "max_leaf_nodes"]
    assert not any(line.startswith("not shown for width") for line in wide)
    assert max(len(line) for line in wide[: wide.index("")]) <= 120  # the sentences still wrap


def test_on_a_narrow_terminal_names_are_cut_but_keep_their_run_id() -> None:
    lines = format_table(many_params_result(), top=20, width=70).splitlines()
    assert "features md5, dirty" in " ".join(lines[: lines.index("")])
    first = lines[lines.index("") + 3]
    assert first.split()[1:3] == ["hist_gradient_boost..", "11111111"]
    narrowest = format_table(many_params_result(), top=20, width=40).splitlines()
    assert narrowest[narrowest.index("") + 3].split()[:3] == ["1", "hist_gra..", "11111111"]  # wider than 40: the ranking stays


def test_workspace_data_version_is_what_dvc_lock_records_for_the_training_features(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert workspace_features_md5()[0] is None and "no BTS project here" in workspace_features_md5()[1]
    (tmp_path / "dvc.yaml").write_text("stages:\n  train:\n    cmd: python src/stages/train.py --features data/f.parquet --out m\n")
    assert workspace_features_md5() == (None, "no dvc.lock in the workspace (the pipeline has not run)")
    lock = {"schema": "2.0", "stages": {"featurize": {"outs": [{"path": "data/f.parquet", "md5": DATA}, {"path": "x", "md5": OTHER}]}}}
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    assert workspace_features_md5() == (DATA, "")
    (tmp_path / "dvc.lock").write_text("stages: [")
    assert workspace_features_md5()[1].startswith("dvc.lock is not valid YAML")


def test_plot_axes_say_which_way_is_better() -> None:
    import matplotlib.pyplot as plt

    assert axis_label("training.seconds", "min") == "training.seconds (lower is better)"
    result = ranked_result()
    figure = front_figure(result["ranked"], result["comparison"])
    (axes,) = figure.axes
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("test.h1.rmse (lower is better)", "test.h1.skill (higher is better)")
    assert axes.get_title() == "bts compare: 3 runs ranked on test.h1.rmse, test.h1.skill"
    plt.close(figure)


def test_the_plot_names_every_run_few_enough_apart_from_each_other_and_the_title() -> None:
    import matplotlib.pyplot as plt

    comparison = Comparison({"test.h1.rmse": "min", "test.h1.skill": "max"}, {"test.h1.rmse": 1.0, "test.h1.skill": 1.0}, "")
    count = 8  # a trade-off: each run better on one metric and worse on the other, all on the front, close together
    runs = rows(
        {
            "run_id": [f"{i:032x}" for i in range(count)] + ["f" * 32],
            "run_name": [f"run-{i}" for i in range(count)] + ["off-front"],
            "dvc_exp_name": [f"exp-{i}" for i in range(count)] + [None],
            "test.h1.rmse": [0.50 + 0.001 * i for i in range(count)] + [0.9],
            "test.h1.skill": [0.40 + 0.001 * i for i in range(count)] + [0.1],
            "has_params": [True] * (count + 1),
        }
    )
    ranked = rank_runs(runs, comparison.directions, comparison.weights)
    figure = front_figure(ranked, comparison)
    (axes,) = figure.axes
    renderer = figure.canvas.get_renderer()
    labels = [child for child in axes.texts]
    assert sorted(label.get_text().split()[1] for label in labels) == sorted([*(f"exp-{i}" for i in range(count)), "off-front"])
    from matplotlib.text import Text

    boxes = [Text.get_window_extent(label, renderer) for label in labels]  # the names, not their leader lines
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    title = axes.title.get_window_extent(renderer)
    assert not any(box.overlaps(title) for box in boxes)
    plt.close(figure)
