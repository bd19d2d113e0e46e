"""Pareto front, weighted scores and ranking of `bts compare` on a few runs; its table, plot labels and argument checks."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from bts.cli import build_parser, main
from bts.errors import ConfigError
from bts.lifecycle.compare import (
    DEFAULT_METRICS,
    Comparison,
    axis_label,
    comparison_from_args,
    format_table,
    front_figure,
    pareto_front,
    parse_metrics,
    parse_pairs,
    parse_weights,
    rank_runs,
    ranked_on,
    result_document,
    search_filter,
    varying_params,
    weighted_scores,
)

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
    assert parse_metrics(" test.rmse:min , test.skill:MAX") == {"test.rmse": "min", "test.skill": "max"}
    assert parse_metrics(DEFAULT_METRICS) == {"test.rmse": "min", "test.skill": "max"}  # quality only: no wall-clock seconds


@pytest.mark.parametrize("text", ["test.rmse", "test.rmse:lowest", ":min", "test.rmse:min,", "a:min,a:max"])
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
    text = search_filter("metrics.`test.rmse` < 1", {"dvc.exp_name": "it's"}, {"train.model": "ridge"})
    assert text == "metrics.`test.rmse` < 1 AND tags.`dvc.exp_name` = \"it's\" AND params.`train.model` = 'ridge'"
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
        comparison_from_args(parser.parse_args(["compare", "--metrics", "test.rmse:min", "--plot", "front.png"]))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--metrics", "test.rmse"], "bts: error: --metrics: 'test.rmse' is not NAME:min or NAME:max"),
        (["--weights", "1,2,3"], "bts: error: --weights: 3 weights for 2 metrics"),
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
            "test.rmse": [1.0, 2.0, 3.0, 4.0],
        }
    )
    # train.model is the same wherever it was logged: the run that logged no params at all does not make it differ
    assert varying_params(runs) == ["params.train.alpha", "params.train.ridge.alpha"]
    assert varying_params(runs[:1]) == []
    assert varying_params([runs[0], runs[3]]) == []
    assert varying_params([]) == []


def test_ranked_on_states_each_metric_with_its_direction() -> None:
    quality = Comparison({"test.rmse": "min", "test.skill": "max"}, {"test.rmse": 1.0, "test.skill": 1.0}, "")
    assert ranked_on(quality) == "test.rmse (lower is better) and test.skill (higher is better), equal weights"
    three = Comparison({"a": "min", "b": "max", "c": "min"}, {"a": 2.0, "b": 1.0, "c": 0.5}, "")
    assert ranked_on(three) == "a (lower is better, weight 2), b (higher is better, weight 1) and c (lower is better, weight 0.5)"
    assert ranked_on(Comparison({"a": "max"}, {"a": 1.0}, "")) == "a (higher is better)"


def rows(columns: dict[str, list]) -> list[dict[str, Any]]:
    """Columns of equal length as one dict per run."""
    return [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def ranked_result(filter_string: str = "") -> tuple[dict, Comparison]:
    comparison = Comparison({"test.rmse": "min", "test.skill": "max"}, {"test.rmse": 1.0, "test.skill": 1.0}, filter_string)
    runs = rows(
        {
            "run_id": ["a" * 32, "b" * 32, "c" * 32],
            "run_name": ["ridge-1", "enet-2", None],
            "dvc_exp_name": ["exp-1", None, "exp-3"],
            "test.rmse": [0.5, 0.7, 0.9],
            "test.skill": [0.6, 0.4, 0.2],
            "has_params": [True, True, True],
            "params.train.alpha": [None, "0.3", "0.01"],
            "params.train.model": ["ridge", "elasticnet", "elasticnet"],
        }
    )
    ranked = rank_runs(runs, comparison.directions, comparison.weights)
    result = {
        "experiment": "e",
        "experiment_id": "1",
        "filter": filter_string,
        "runs_matched": 4,
        "runs_left_out": 1,
        "runs_without_params": 0,
    }
    return {**result, "params": ["train.alpha", "train.model"], "ranked": ranked}, comparison


def test_table_states_the_ranking_metrics_and_shows_the_params_that_differ() -> None:
    result, comparison = ranked_result("tags.`sweep` = 'a'")
    assert format_table(result, comparison, top=2).splitlines() == [
        "experiment 'e': 3 runs ranked on test.rmse (lower is better) and test.skill (higher is better), equal weights",
        "filter: tags.`sweep` = 'a'",
        "1 run without all metrics was left out",
        "params that differ between them: train.alpha, train.model",
        "Pareto front: 1 run, marked *; 1 of them in the top 2",
        "",
        "rank  run      run id    dvc exp  test.rmse  test.skill   score  front  params.train.alpha  params.train.model",
        "----  -------  --------  -------  ---------  ----------  ------  -----  ------------------  ------------------",
        "   1  ridge-1  aaaaaaaa  exp-1          0.5         0.6  1.0000  *      -                   ridge",
        "   2  enet-2   bbbbbbbb                 0.7         0.4  0.5000         0.3                 elasticnet",
    ]


def test_table_without_differing_params_says_so_and_counts_runs_without_params() -> None:
    result, comparison = ranked_result()
    ranked = [{key: value for key, value in run.items() if not key.startswith("params.")} for run in result["ranked"]]
    result = {**result, "params": [], "ranked": ranked}
    lines = format_table(result, comparison, top=1).splitlines()
    assert lines[2] == "no param differs between them"
    result["runs_without_params"] = 1
    assert format_table(result, comparison, top=1).splitlines()[2] == "no param differs between them (1 run logged no params)"
    assert lines[5] == "rank  run      run id    dvc exp  test.rmse  test.skill   score  front"


def test_params_no_run_shown_sets_are_named_but_kept_out_of_the_table() -> None:
    result, comparison = ranked_result()
    for run in result["ranked"]:
        if run["run_name"] == "enet-2":
            run["params.train.alpha"] = None  # only the 3rd run sets it
    lines = format_table(result, comparison, top=2).splitlines()
    assert lines[2:5] == [
        "params that differ between them: train.alpha, train.model",
        "not set in any run shown, so not in the table: train.alpha",
        "Pareto front: 1 run, marked *; 1 of them in the top 2",
    ]
    assert lines[6].split()[-2:] == ["front", "params.train.model"]
    assert "params.train.alpha" in format_table(result, comparison, top=3)


def test_json_holds_each_run_params_with_null_where_a_run_lacks_one() -> None:
    result, comparison = ranked_result()
    document = result_document(result, comparison)
    assert document["params"] == ["train.alpha", "train.model"]
    assert [run["params"] for run in document["ranking"]] == [
        {"train.alpha": None, "train.model": "ridge"},
        {"train.alpha": "0.3", "train.model": "elasticnet"},
        {"train.alpha": "0.01", "train.model": "elasticnet"},
    ]


def test_plot_axes_say_which_way_is_better() -> None:
    import matplotlib.pyplot as plt

    assert axis_label("training.seconds", "min") == "training.seconds (lower is better)"
    result, comparison = ranked_result()
    figure = front_figure(result["ranked"], comparison)
    (axes,) = figure.axes
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("test.rmse (lower is better)", "test.skill (higher is better)")
    assert axes.get_title() == "bts compare: 3 runs ranked on test.rmse, test.skill"
    plt.close(figure)


def test_the_plot_names_every_run_few_enough_apart_from_each_other_and_the_title() -> None:
    import matplotlib.pyplot as plt

    comparison = Comparison({"test.rmse": "min", "test.skill": "max"}, {"test.rmse": 1.0, "test.skill": 1.0}, "")
    count = 8  # a trade-off: each run better on one metric and worse on the other, all on the front, close together
    runs = rows(
        {
            "run_id": [f"{i:032x}" for i in range(count)] + ["f" * 32],
            "run_name": [f"run-{i}" for i in range(count)] + ["off-front"],
            "dvc_exp_name": [f"exp-{i}" for i in range(count)] + [None],
            "test.rmse": [0.50 + 0.001 * i for i in range(count)] + [0.9],
            "test.skill": [0.40 + 0.001 * i for i in range(count)] + [0.1],
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
