"""`bts monitor`'s computations: the training profile and drift, the service and cost view, live accuracy, the page."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from bts.data.catalogue import Sensor
from bts.errors import BtsError, ConfigError
from bts.horizons import FORECAST, LOWER, UPPER, label, metric_name, output_column, output_columns
from bts.model.profile import drift, feature_profile, psi
from bts.monitoring.command import live_lines, report_metrics
from bts.monitoring.page import FLAGGED, render
from bts.monitoring.report import alerts, build_report, live_accuracy, model_horizons, offline_metrics, parse_time, service
from bts.params import MonitorParams

PARAMS = MonitorParams(psi_threshold=0.25, ks_p_value=0.01, min_rows=50, ignore_features=["hour_sin"], skill_threshold=0.0)
CATALOGUE = {122: Sensor(122, "Load of power grid", "A", 0, 100)}
T0 = pd.Timestamp("2026-11-27 08:00", tz=UTC)


def training_frame(rows: int = 5_000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "lag_1": rng.normal(50, 10, rows),
            "lag_2": rng.normal(50, 10, rows),
            "gap_1_seconds": rng.choice([30.0, 40.0, 50.0], rows),
            "hour_sin": rng.uniform(-1, 1, rows),
        }
    )


def test_the_profile_is_deterministic_and_holds_what_drift_needs() -> None:
    frame = training_frame()
    first, second = feature_profile(frame, list(frame.columns), seed=3), feature_profile(frame, list(frame.columns), seed=3)
    assert first == second
    lag = first["features"]["lag_1"]
    assert lag["count"] == 5_000 and len(lag["percentiles"]) == 101 and len(lag["sample"]) == 2_000
    assert len(lag["psi_edges"]) == 9 and abs(sum(lag["psi_shares"]) - 1) < 1e-12
    assert first["features"]["gap_1_seconds"]["psi_edges"] == [30.0, 40.0, 50.0]  # three values: three edges, not nine


def test_drift_flags_the_shifted_feature_only_and_never_an_ignored_one() -> None:
    profile = feature_profile(training_frame(), ["lag_1", "lag_2", "gap_1_seconds", "hour_sin"], seed=1)
    live = training_frame(2_000, seed=7)
    live["lag_1"] += 8  # most of a standard deviation
    live["hour_sin"] = 0.9  # a few hours of serving: the clock, not drift
    rows = {row["feature"]: row for row in drift(profile, live, 0.25, 0.01, ignored=["hour_sin"])}
    assert [name for name, row in rows.items() if row["drifted"]] == ["lag_1"]
    assert rows["lag_1"]["psi"] > 0.25 and rows["lag_1"]["ks_p_value"] < 0.01
    assert rows["lag_2"]["psi"] < 0.05 and rows["hour_sin"]["psi"] > 1 and rows["hour_sin"]["ignored"]


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    even = np.full(10, 0.1)
    assert psi(even, even) == 0
    assert 0 < psi(even, np.r_[0.2, np.full(9, 0.8 / 9)]) < psi(even, np.r_[0.5, np.full(9, 0.5 / 9)])


def requests_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": [T0 + pd.Timedelta(seconds=s) for s in range(5)],
            "latency_ms": [1.0, 2.0, 3.0, 4.0, 100.0],
            "rows": [10, 10, 0, 10, 0],
            "status": [200, 200, 400, 200, 413],
            "error_code": [None, None, "WRONG_TYPE", None, "TOO_MANY_ROWS"],
        }
    )


def test_service_counts_errors_by_kind_and_costs_cpu_per_prediction() -> None:
    process = pd.DataFrame(
        {"pid": [1, 1, 1, 2, 2], "cpu_seconds": [5.0, 5.5, 6.0, 1.0, 1.3], "peak_rss_bytes": [2**20 * 100] * 4 + [2**20 * 300]}
    )
    view = service(requests_frame(), pd.DataFrame({column: np.zeros(30) for column in output_columns([1, 5])}), process)
    assert view["requests"] == 5 and view["failed"] == 2 and view["error_rate"] == 0.4
    assert view["errors_by_code"] == {"WRONG_TYPE": 1, "TOO_MANY_ROWS": 1}
    assert view["latency_ms"]["p50"] == 3.0 and view["requests_per_second"] == 1.25
    assert view["cost"]["cpu_seconds"] == 1.3  # what each server process used in the window: 1.0 + 0.3
    assert view["cost"]["cpu_seconds_per_1000_predictions"] == round(1.3 / 30 * 1000, 4)
    assert view["cost"]["peak_memory_mb"] == 300.0 and view["cost"]["server_processes"] == 2


def actuals_frame() -> pd.DataFrame:
    """One series read every minute, a saw-tooth of values."""
    minutes = np.arange(200)
    return pd.DataFrame(
        {
            "id": minutes,
            "station_id": 7,
            "parameter_id": 122,
            "reading_time": pd.Timestamp("2017-04-18 00:00") + pd.to_timedelta(minutes, unit="min"),  # naive UTC, as cleaned
            "value": (minutes % 17).astype(float),
        }
    )


def later(actuals: pd.DataFrame, positions: np.ndarray, horizon: int) -> np.ndarray:
    """The value `horizon` readings after each position of the one series of actuals (NaN past its end)."""
    values = actuals["value"].to_numpy()
    return np.array([values[p + horizon] if p + horizon < len(values) else np.nan for p in positions])


def logged_rows(actuals: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """Prediction rows as `bts serve` logs them, made at the readings at positions (keyed by id): at h1, the latest
    reading plus 0.5 in an interval of half-width 3 (worse than persistence on the saw-tooth's drops, which fall
    outside); at h5, the truth plus 0.25 in an interval of half-width 0.2 (never holding it)."""
    latest = actuals["value"].to_numpy()[positions]
    frame = pd.DataFrame(
        {
            "station_id": 7,
            "parameter_id": 122,
            "reading_id": actuals["id"].to_numpy()[positions],
            "reading_time": actuals["reading_time"].dt.tz_localize(UTC).to_numpy()[positions],
            "lag_1": latest,
        }
    )
    forecasts = {
        1: (latest + 0.5, 3.0),
        5: (np.where(np.isnan(later(actuals, positions, 5)), latest, later(actuals, positions, 5) + 0.25), 0.2),
    }
    for horizon, (forecast, half) in forecasts.items():
        frame[output_column(FORECAST, horizon)] = forecast
        frame[output_column(LOWER, horizon)] = forecast - half
        frame[output_column(UPPER, horizon)] = forecast + half
    return frame


def test_live_accuracy_joins_each_prediction_with_the_reading_each_horizon_later_in_its_series() -> None:
    actuals = actuals_frame()
    positions = np.arange(80, 200)
    rows = logged_rows(actuals, positions).astype({"reading_id": "object"})
    rows.loc[:59, "reading_id"] = None  # the first half joined by time
    unkeyed = rows.iloc[:5].assign(station_id=np.nan, parameter_id=np.nan, reading_id=None)
    unkeyed["reading_time"] = unkeyed["reading_time"].where(np.zeros(5, dtype=bool))  # NaT, as the log reads back
    predictions = pd.concat([rows, unkeyed], ignore_index=True)
    live = live_accuracy(predictions, actuals, [1, 5], 0.9, CATALOGUE, PARAMS)
    assert (live["predictions"], live["without_keys"], live["horizons"], live["target_coverage"]) == (125, 5, [1, 5], 0.9)
    assert list(live["by_horizon"]) == ["h1", "h5"]
    for horizon, half in ((1, 3.0), (5, 0.2)):
        scored = live["by_horizon"][label(horizon)]
        actual = later(actuals, positions, horizon)
        has = ~np.isnan(actual)
        assert scored["horizon"] == horizon and scored["joined"] == has.sum() == 120 - horizon
        assert scored["without_later_reading"] == horizon and scored["joined_share"] == round((120 - horizon) / 125, 6)
        forecast, actual, latest = rows[output_column(FORECAST, horizon)].to_numpy()[has], actual[has], rows["lag_1"].to_numpy()[has]
        rmse, persistence = np.sqrt(np.mean((forecast - actual) ** 2)), np.sqrt(np.mean((latest - actual) ** 2))
        inside = (forecast - half <= actual) & (actual <= forecast + half)
        overall = scored["overall"]
        assert overall["rows"] == 120 - horizon
        assert overall["rmse"] == round(rmse, 6) and overall["mae"] == round(np.mean(np.abs(forecast - actual)), 6)
        assert overall["persistence_rmse"] == round(persistence, 6) and overall["skill"] == round(1 - rmse / persistence, 6)
        assert overall["coverage"] == round(inside.mean(), 6) and overall["mean_width"] == pytest.approx(2 * half)
        series = scored["by_series"][0]
        assert (series["station_id"], series["sensor"], series["unit"], series["rows"]) == (7, "Load of power grid", "A", 120 - horizon)
        assert {k: series[k] for k in overall} == overall  # the one series is the whole
    h1, h5 = live["by_horizon"]["h1"]["overall"], live["by_horizon"]["h5"]["overall"]
    assert 0.85 < h1["coverage"] < 1 and h5["coverage"] == 0.0 and h1["skill"] < 0 < h5["skill"]  # the cases told apart
    assert live["by_horizon"]["h1"]["flagged"] == ["station 7 Load of power grid"] and live["by_horizon"]["h1"]["overall_flagged"]
    assert live["by_horizon"]["h5"]["flagged"] == [] and not live["by_horizon"]["h5"]["overall_flagged"]


def test_the_reading_h_steps_later_is_the_series_own() -> None:
    actuals = actuals_frame()
    other = actuals.assign(id=actuals["id"] + 1000, station_id=8, value=100 + actuals["value"])  # the same times, another station
    both = pd.concat([actuals, other]).sample(frac=1, random_state=3)  # input order must not matter
    positions = np.arange(190, 200)
    predictions = pd.concat([logged_rows(actuals, positions), logged_rows(other, positions).assign(station_id=8)], ignore_index=True)
    live = live_accuracy(predictions, both, [1, 5], 0.9, CATALOGUE, PARAMS)
    for horizon in (1, 5):
        series = live["by_horizon"][label(horizon)]["by_series"]
        assert [(row["station_id"], row["rows"]) for row in series] == [(7, 10 - horizon), (8, 10 - horizon)]
        assert series[0]["persistence_rmse"] == series[1]["persistence_rmse"]  # station 8's own readings, 100 higher


def test_two_readings_in_one_second_are_told_apart_by_their_id_only() -> None:
    actuals = actuals_frame().iloc[:4].copy()
    actuals["reading_time"] = actuals["reading_time"].iloc[[0, 1, 1, 2]].to_numpy()  # readings 1 and 2 share a second
    by_id = logged_rows(actuals, np.arange(3))[["station_id", "parameter_id", "reading_id", "reading_time", "lag_1"]]
    by_id = by_id.assign(**{column: 0.0 for column in output_columns([1])})
    live = live_accuracy(by_id, actuals, [1], 0.9, CATALOGUE, PARAMS)["by_horizon"]["h1"]
    assert live["joined"] == 3 and live["overall"]["rmse"] == round(float(np.sqrt(np.mean(actuals["value"].iloc[1:4] ** 2))), 6)
    by_time = by_id.assign(reading_id=None)
    live = live_accuracy(by_time, actuals, [1], 0.9, CATALOGUE, PARAMS)["by_horizon"]["h1"]
    assert live["joined"] == 1 and live["without_later_reading"] == 2  # only the reading alone in its second


def test_the_horizons_are_those_of_the_logged_output_columns_and_a_log_without_them_is_one_error() -> None:
    rows = pd.DataFrame({"lag_1": [1.0], **{column: [1.0] for column in output_columns([1, 5, 15])}, "package_md5": ["abc"]})
    assert model_horizons(rows, "abc") == [1, 5, 15]
    older = pd.DataFrame({"lag_1": [1.0], "prediction": [1.0]})  # a log of a server that wrote one prediction per row
    with pytest.raises(BtsError) as caught:
        model_horizons(older, "abc.dir")
    message = str(caught.value)
    assert message.startswith("the monitoring log's predictions of package abc.dir hold no forecast, lower and upper column")
    assert "(output columns: none;" in message and message.endswith("leave out --actuals") and "\n" not in message
    with pytest.raises(BtsError, match="output columns: forecast_h1, lower_h1;"):
        model_horizons(rows[["forecast_h1", "lower_h1"]], "abc")


def test_offline_scores_are_the_runs_test_scores_per_horizon_and_parameter() -> None:
    metrics = {"test.h1.rmse": 1.0, "test.h1.coverage": 0.91, "test.h5.rmse": 2.0, "valid.h15.rmse": 3.0,
               "test_by_parameter.122.h5.skill": 0.2, "test_by_station.7.h1.skill": 0.1, "test.rows": 10.0}  # fmt: skip
    offline = offline_metrics(metrics)
    assert offline["horizons"] == [1, 5]
    assert offline["by_horizon"]["h1"] == {"rmse": 1.0, "mae": None, "persistence_rmse": None, "skill": None, "coverage": 0.91,
                                           "mean_width": None, "winkler": None}  # fmt: skip
    assert offline["by_horizon"]["h5"]["rmse"] == 2.0 and list(offline["by_parameter"]) == ["122"]
    assert offline["by_parameter"]["122"]["h5"]["skill"] == 0.2 and offline["by_parameter"]["122"]["h1"]["skill"] is None


def a_report(actuals: pd.DataFrame | None, predictions: pd.DataFrame) -> dict:
    frame = training_frame()
    profile = feature_profile(frame, list(frame.columns), seed=1)
    log = {
        "requests": requests_frame(),
        "predictions": predictions,
        "process": pd.DataFrame(columns=["pid", "cpu_seconds", "peak_rss_bytes"]),
    }
    model = {"reference": "models:/m/1", "label": "m version 1 <b>", "name": "m", "version": "1", "package_md5": "abc.dir",
             "run_id": "r" * 32, "git_commit": "c" * 40, "lineage": {"data.features.md5": "f" * 32}}  # fmt: skip
    window = {"since": None, "until": None, "generated": "2026-11-27T08:00:00+00:00", "log": "monitoring", "actuals": None}
    scores = {"mae": 0.8, "skill": 0.17, "coverage": 0.9, "mean_width": 3.0}
    metrics = {metric_name("test", h, score): value for h in (1, 5) for score, value in {**scores, "rmse": 1.0 * h}.items()}
    return build_report(model, log, profile, metrics, actuals, 0.9, CATALOGUE, PARAMS, window)


def test_the_report_and_its_page_say_what_is_wrong() -> None:
    live = training_frame(500, seed=9)
    live["lag_2"] *= 1.5
    predictions = live.assign(station_id=None, parameter_id=None, reading_time=None, **{c: live["lag_1"] for c in output_columns([1])})
    report = a_report(None, predictions)
    assert report["drift"]["drifted"] == ["lag_2"] and report["live"] is None
    assert report["offline"]["by_horizon"]["h5"]["rmse"] == 5.0
    assert alerts(report) == [f"input drift: lag_2 (PSI {report['drift']['features'][1]['psi']:.2f})"]
    page = render(report)
    assert page.count('src="data:image/png;base64,') == 2  # latency and drift; no live plot without actuals
    assert "m version 1 &lt;b&gt;" in page and "<b>" not in page  # text is escaped
    assert "No actuals given" in page and "DRIFTED" in page


def test_live_skill_alerts_name_the_horizon_and_the_page_shows_every_horizon_beside_the_run() -> None:
    actuals = actuals_frame()
    predictions = logged_rows(actuals, np.arange(80, 200))
    report = a_report(actuals, predictions)
    h1 = report["live"]["by_horizon"]["h1"]
    assert list(report["live"]["by_horizon"]) == ["h1", "h5"]  # the logged columns', not the run's or params.yaml's
    assert report["alerts"][1:] == [  # after input drift: the rows are no sample of the training frame
        f"live skill over persistence below +0.0% at h1 ({h1['overall']['skill']:+.1%})",
        "live skill below +0.0% on 1 of 1 series: station 7 Load of power grid (h1)",
    ]
    h5 = report["live"]["by_horizon"]["h5"]["overall"]
    assert live_lines(report["live"], report["offline"]) == [
        f"  live h1: 119 of 120 predictions joined; RMSE {h1['overall']['rmse']:.4g}, skill {h1['overall']['skill']:+.1%} over "
        f"persistence, coverage {h1['overall']['coverage']:.1%} (target 90.0%), mean width 6; offline test RMSE 1, skill +17.0%, "
        "coverage 90.0%",
        f"  live h5: 115 of 120 predictions joined; RMSE 0.25, skill {h5['skill']:+.1%} over persistence, coverage 0.0% "
        "(target 90.0%), mean width 0.4; offline test RMSE 5, skill +17.0%, coverage 90.0%",
    ]
    metrics = report_metrics(report)
    assert metrics["live.h1.coverage"] == h1["overall"]["coverage"] and metrics["live.h5.coverage"] == 0.0
    assert metrics["live.h5.skill"] == report["live"]["by_horizon"]["h5"]["overall"]["skill"] and "live.skill" not in metrics
    page = render(report)
    assert page.count('src="data:image/png;base64,') == 3  # latency, drift, live against offline
    assert "<th>target coverage</th>" in page and "<th>mean width</th>" in page
    assert page.count("<td>90.0%</td>") == 4  # the target beside each horizon's live coverage, the run's coverage at each
    assert "<td>h1</td><td>live</td><td>119</td>" in page and "<td>h5</td><td>live</td><td>115</td>" in page
    assert f"<td>{h1['overall']['coverage']:.1%}</td>" in page and "<td>0.0%</td>" in page
    assert page.count(f'<td class="alert">{FLAGGED}</td>') == 2  # h1 overall and its one series; h5 is ok
    assert "<td>7</td><td>Load of power grid</td><td>A</td><td>h1</td><td>119</td>" in page  # a row per series and horizon
    assert "<td>7</td><td>Load of power grid</td><td>A</td><td>h5</td><td>115</td>" in page


def test_no_prediction_logged_is_nothing_to_join_not_an_error() -> None:
    report = a_report(actuals_frame(), pd.DataFrame())
    assert report["live"]["predictions"] == 0 and report["live"]["by_horizon"] == {} and report["alerts"] == []
    assert "None of the 0 predictions to join" in render(report)


def test_an_empty_log_is_one_error_naming_the_package() -> None:
    empty = {"requests": pd.DataFrame(), "predictions": pd.DataFrame(), "process": pd.DataFrame()}
    model = {"reference": "models/package", "package_md5": "abc.dir"}
    window = {"log": "monitoring"}
    with pytest.raises(BtsError, match=r"no request for package abc\.dir in the monitoring log monitoring"):
        build_report(model, empty, None, {}, None, 0.9, CATALOGUE, PARAMS, window)


def test_times_are_iso_or_back_from_now() -> None:
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    assert parse_time("2h", "--since", now) == pd.Timestamp("2026-11-27 10:00", tz=UTC)
    assert parse_time("2026-11-27T08:00", "--since", now) == pd.Timestamp("2026-11-27 08:00", tz=UTC)
    assert parse_time("2026-11-27T08:00+01:00", "--until", now) == pd.Timestamp("2026-11-27 07:00", tz=UTC)
    assert parse_time(None, "--since", now) is None
    with pytest.raises(ConfigError, match="--since 'yesterday': not a time"):
        parse_time("yesterday", "--since", now)


def test_an_unreadable_log_file_is_named_once_and_left_out_and_the_rest_is_read(tmp_path) -> None:
    import pandas as pd

    from bts.monitoring.report import read_log

    day = tmp_path / "requests" / "date=2026-12-07"
    day.mkdir(parents=True)
    good = pd.DataFrame({"time": pd.to_datetime(["2026-12-07T00:00:01Z", "2026-12-07T00:00:02Z"]), "package_md5": ["abc", "other"]})
    good.to_parquet(day / "a.parquet")
    (day / "b.parquet").write_bytes(b"garbage")
    (day / "c.parquet").write_bytes((day / "a.parquet").read_bytes()[:-20])  # cut short
    pd.DataFrame({"x": [1]}).to_parquet(day / "d.parquet")  # another table's shape
    pd.DataFrame({"time": ["now"], "package_md5": ["abc"]}).to_parquet(day / "e.parquet")  # times as text
    os.mkfifo(day / "f.parquet")  # opening it would wait for a writer forever
    (day / "g.parquet").mkdir()
    warnings = []
    tables, skipped = read_log(tmp_path, "abc", None, None, warnings.append)
    assert tables["requests"]["time"].tolist() == [pd.Timestamp("2026-12-07T00:00:01Z")]  # the good file, this package's row
    assert skipped == [f"requests/date=2026-12-07/{name}.parquet" for name in "bcdefg"]
    assert warnings[-1] == "requests/date=2026-12-07/g.parquet: not a regular file; left out of the report"
    assert [line.split(":")[0] for line in warnings] == skipped and all(line.endswith("; left out of the report") for line in warnings)
    assert not any(str(tmp_path) in line for line in warnings)
    assert tables["predictions"].empty and tables["process"].empty


def test_the_pages_figures_keep_legends_off_the_data_and_show_errors_of_any_ratio() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from bts.monitoring.page import accuracy_figure, drift_figure, latency_figure

    times = pd.date_range("2026-12-07", periods=6, freq="min", tz=UTC).astype(str)
    series = [{"time": t, "requests": 10, "failed": 1, "p50_ms": 2.0, "p95_ms": 5.0} for t in times]
    features = [{"feature": f"lag_{i}", "psi": 0.1 * i, "ignored": False, "drifted": i > 2} for i in range(1, 5)]
    by_series = [
        {"parameter_id": 122, "sensor": "Load", "unit": "A", "rows": 100, "rmse": 14.0, "persistence_rmse": 13.5},
        {"parameter_id": 111, "sensor": "Temp", "unit": "degC", "rows": 100, "rmse": 9.0, "persistence_rmse": 8.0},
    ]
    live = {"by_horizon": {"h1": {"horizon": 1, "by_series": by_series}, "h5": {"horizon": 5, "by_series": by_series[:1]},
                           "h15": {"horizon": 15, "by_series": []}}}  # fmt: skip
    offline = {"by_parameter": {"122": {"h1": {"rmse": 0.3}, "h5": {"rmse": 0.5}}, "111": {"h1": {"rmse": 0.2}}}}
    figures = [latency_figure(series), drift_figure(features, 0.25), accuracy_figure(live, offline)]
    for figure in figures:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        legends = [axes.get_legend() for axes in figure.axes if axes.get_legend() is not None]
        assert legends
        for legend in legends:
            assert not any(legend.get_window_extent(renderer).overlaps(axes.get_window_extent(renderer)) for axes in figure.axes)
    panels = figures[2].axes
    assert [axes.get_title() for axes in panels] == ["h1: 1 step(s) ahead", "h5: 5 step(s) ahead"]  # none for a horizon unjoined
    assert all(axes.get_yscale() == "log" for axes in panels)  # a 0.3 bar stays visible beside a 14 one
    offline_bars = [patch.get_height() for patch in panels[1].containers[2]]
    assert offline_bars == [0.5]  # each panel shows the run's score at its own horizon


def test_a_flagged_series_is_marked_in_its_own_cell_not_a_red_row() -> None:
    from bts.monitoring.page import FLAGGED, table

    page = table(["station", "skill", "verdict"], [[1, "-5.0%", FLAGGED], [2, "+3.0%", "ok"]], flag_cells=FLAGGED)
    assert f'<td class="alert">{FLAGGED}</td>' in page and page.count('class="alert"') == 1
    assert '<tr class="alert">' not in page
