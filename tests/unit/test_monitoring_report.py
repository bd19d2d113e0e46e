"""`bts monitor`'s computations: the training profile and drift, the service and cost view, live accuracy, the page."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from bts.data.catalogue import Sensor
from bts.errors import BtsError, ConfigError
from bts.model.profile import drift, feature_profile, psi
from bts.monitoring.page import render
from bts.monitoring.report import alerts, build_report, live_accuracy, parse_time, service
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
    view = service(requests_frame(), pd.DataFrame({"prediction": np.zeros(30)}), process)
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


def test_live_accuracy_joins_each_prediction_with_the_next_reading_of_its_series() -> None:
    actuals = actuals_frame()
    predictions = pd.DataFrame(
        {
            "station_id": [7] * 120 + [None] * 5,
            "parameter_id": [122] * 120 + [None] * 5,
            "reading_id": [None] * 60 + list(actuals["id"].iloc[140:]) + [None] * 5,  # the first half by time
            "reading_time": list(actuals["reading_time"].iloc[80:].dt.tz_localize(UTC)) + [None] * 5,
            "lag_1": list(actuals["value"].iloc[80:]) + [0.0] * 5,
            "prediction": list(actuals["value"].iloc[80:] + 0.5) + [0.0] * 5,
        }
    )
    live = live_accuracy(predictions, actuals, horizon=1, catalogue=CATALOGUE, params=PARAMS)
    assert live["predictions"] == 125 and live["without_keys"] == 5 and live["without_next_reading"] == 1 and live["joined"] == 119
    following = actuals["value"].iloc[81:200].to_numpy()
    expected = np.sqrt(np.mean((actuals["value"].iloc[80:199].to_numpy() + 0.5 - following) ** 2))
    assert live["overall"]["rmse"] == round(expected, 6)
    persistence = np.sqrt(np.mean((actuals["value"].iloc[80:199].to_numpy() - following) ** 2))
    assert live["overall"]["persistence_rmse"] == round(persistence, 6)
    series = live["by_series"][0]
    assert (series["station_id"], series["sensor"], series["unit"], series["rows"]) == (7, "Load of power grid", "A", 119)
    assert series["flagged"] == (series["skill"] < 0)


def test_two_readings_in_one_second_are_told_apart_by_their_id_only() -> None:
    actuals = actuals_frame().iloc[:4].copy()
    actuals["reading_time"] = actuals["reading_time"].iloc[[0, 1, 1, 2]].to_numpy()  # readings 1 and 2 share a second
    row = {"station_id": 7, "parameter_id": 122, "lag_1": 0.0, "prediction": 0.0}
    times = actuals["reading_time"].dt.tz_localize(UTC)
    by_id = pd.DataFrame([{**row, "reading_id": i, "reading_time": times.iloc[i]} for i in range(3)])
    live = live_accuracy(by_id, actuals, horizon=1, catalogue=CATALOGUE, params=PARAMS)
    assert live["joined"] == 3 and live["overall"]["rmse"] == round(float(np.sqrt(np.mean(actuals["value"].iloc[1:4] ** 2))), 6)
    by_time = by_id.assign(reading_id=None)
    live = live_accuracy(by_time, actuals, horizon=1, catalogue=CATALOGUE, params=PARAMS)
    assert live["joined"] == 1 and live["without_next_reading"] == 2  # only the reading alone in its second


def test_the_report_and_its_page_say_what_is_wrong() -> None:
    frame = training_frame()
    profile = feature_profile(frame, list(frame.columns), seed=1)
    live = training_frame(500, seed=9)
    live["lag_2"] *= 1.5
    predictions = live.assign(prediction=live["lag_1"], station_id=None, parameter_id=None, reading_time=None)
    log = {
        "requests": requests_frame(),
        "predictions": predictions,
        "process": pd.DataFrame(columns=["pid", "cpu_seconds", "peak_rss_bytes"]),
    }
    model = {"reference": "models:/m/1", "label": "m version 1 <b>", "name": "m", "version": "1", "package_md5": "abc.dir",
             "run_id": "r" * 32, "git_commit": "c" * 40, "lineage": {"data.features.md5": "f" * 32}}  # fmt: skip
    window = {"since": None, "until": None, "generated": "2026-11-27T08:00:00+00:00", "log": "monitoring", "actuals": None}
    metrics = {"test.rmse": 1.0, "test.mae": 0.8, "test.persistence_rmse": 1.2, "test.skill": 0.17}
    report = build_report(model, log, profile, metrics, None, 1, CATALOGUE, PARAMS, window)
    assert report["drift"]["drifted"] == ["lag_2"] and report["live"] is None
    assert report["offline"]["overall"]["skill"] == 0.17
    assert alerts(report) == [f"input drift: lag_2 (PSI {report['drift']['features'][1]['psi']:.2f})"]
    page = render(report)
    assert page.count('src="data:image/png;base64,') == 2  # latency and drift; no live plot without actuals
    assert "m version 1 &lt;b&gt;" in page and "<b>" not in page  # text is escaped
    assert "No actuals given" in page and "DRIFTED" in page


def test_an_empty_log_is_one_error_naming_the_package() -> None:
    empty = {"requests": pd.DataFrame(), "predictions": pd.DataFrame(), "process": pd.DataFrame()}
    model = {"reference": "models/package", "package_md5": "abc.dir"}
    window = {"log": "monitoring"}
    with pytest.raises(BtsError, match=r"no request for package abc\.dir in the monitoring log monitoring"):
        build_report(model, empty, None, {}, None, 1, CATALOGUE, PARAMS, window)


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
    live = {
        "by_series": [
            {"parameter_id": 122, "sensor": "Load", "unit": "A", "rows": 100, "rmse": 14.0, "persistence_rmse": 13.5},
            {"parameter_id": 111, "sensor": "Temp", "unit": "degC", "rows": 100, "rmse": 9.0, "persistence_rmse": 8.0},
        ]
    }
    offline = {"by_parameter": {"122": {"rmse": 0.3}, "111": {"rmse": 0.2}}}  # fmt: skip
    figures = [latency_figure(series), drift_figure(features, 0.25), accuracy_figure(live, offline)]
    for figure in figures:
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        for axes in figure.axes:
            legend = axes.get_legend()
            assert legend is not None
            assert not legend.get_window_extent(renderer).overlaps(axes.get_window_extent(renderer))
    assert figures[2].axes[0].get_yscale() == "log"  # a 0.3 bar stays visible beside a 14 one


def test_a_flagged_series_is_marked_in_its_own_cell_not_a_red_row() -> None:
    from bts.monitoring.page import FLAGGED, table

    page = table(["station", "skill", "verdict"], [[1, "-5.0%", FLAGGED], [2, "+3.0%", "ok"]], flag_cells=FLAGGED)
    assert f'<td class="alert">{FLAGGED}</td>' in page and page.count('class="alert"') == 1
    assert '<tr class="alert">' not in page
