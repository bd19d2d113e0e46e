"""The evaluation figure (plots/evaluation.png) and the CSV files `dvc plots` draws: per-sensor panels in each
sensor's own unit, y = x, clipped tails counted and labelled, the same bytes for the same inputs."""

from __future__ import annotations

import struct

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from bts.model.evaluation import residual_histogram
from bts.model.plots import evaluation_figure, horizon_view, plot_evaluation, plot_tables, residual_bins, sensor_label
from tests.conftest import PROJECT

SCORES = {
    "111": {"rmse": 0.5, "persistence_rmse": 1.0, "skill": 0.5},
    "122": {"rmse": 0.75, "persistence_rmse": 0.5, "skill": -0.5},
}


def scored_test() -> pd.DataFrame:
    """Scored test examples: Room temperature (degC) at two stations, Load of power grid (A) with one far outlier, and a
    parameter the catalogue lacks."""
    rows = []
    start = pd.Timestamp("2017-04-21 10:00:00")
    for i in range(4):
        rows.append((1161114011, 111, start + pd.Timedelta(minutes=i), 25.0 + i, 25.5 + i, 24.5 + i))
        rows.append((1161114015, 111, start + pd.Timedelta(minutes=i), 20.0, 20.0, 20.0))
    for i in range(100):  # residuals +-0.5, and one of +10: the 99% quantile of |residual| is 0.5 + 0.01 * 9.5 = 0.595
        residual = 10.0 if i == 99 else (0.5 if i % 2 else -0.5)
        rows.append((1161114011, 122, start + pd.Timedelta(seconds=i), 15.0, 15.0 + residual, 15.0))
    rows.append((1161114011, 999, start, 1.0, 1.5, 1.0))
    frame = pd.DataFrame(rows, columns=["station_id", "parameter_id", "target_time", "target", "predicted", "lag_1"])
    return frame.assign(split="test", lower=frame["predicted"] - 1.0, upper=frame["predicted"] + 1.0)


def test_residual_bins_count_clipped_tails_in_the_end_bins_and_say_how_many():
    table, limit = residual_bins(np.array([-3.0, -1.0, 0.0, 0.5, 2.0, 10.0]), bins=3, quantile=0.5)
    assert limit == 1.5  # the median of |residual|
    assert table.to_dict("list") == {"residual": [-1.0, 0.0, 1.0], "count": [2, 1, 3], "clipped": [1, 0, 2]}


def test_residual_bins_keep_the_columns_and_counts_residuals_csv_always_had():
    residuals = np.random.default_rng(0).standard_t(3, size=500)
    table, _ = residual_bins(residuals)
    pd.testing.assert_frame_equal(table[["residual", "count"]], residual_histogram(residuals))
    assert table["clipped"].iloc[1:-1].eq(0).all()
    assert table["clipped"].sum() == (np.abs(residuals) > np.quantile(np.abs(residuals), 0.99)).sum() == 5


def test_residual_bins_of_zero_residuals_span_plus_minus_one_with_nothing_clipped():
    table, limit = residual_bins(np.zeros(4))
    assert limit == 1.0
    assert table["count"].sum() == 4
    assert table["clipped"].sum() == 0


def test_sensor_label_comes_from_the_catalogue(catalogue):
    assert sensor_label(122, catalogue) == ("Load of power grid", "A")
    assert sensor_label(999, catalogue) == ("parameter 999", "unit unknown")


@pytest.fixture(scope="module")
def figure(catalogue):
    test = scored_test()
    tables, series_key = plot_tables(test, catalogue)
    figure = evaluation_figure(test, tables["forecast.csv"], series_key, catalogue, SCORES, "elasticnet")
    yield figure
    plt.close(figure)


def texts(axes: plt.Axes) -> list[str]:
    return [text.get_text() for text in axes.texts]


def test_figure_title_says_it_is_the_test_split(figure):
    assert figure.get_suptitle() == (
        "Evaluation on the test split: elasticnet forecasts of each sensor's reading 1 step(s) ahead, with their intervals, "
        "against persistence (the latest reading)\n"
        "109 examples, 2 stations, 3 sensors, target times 2017-04-21 10:00 to 2017-04-21 10:03 UTC; "
        "each sensor in its own unit; skill = 1 - rmse / persistence rmse"
    )


def test_forecast_panel_names_station_sensor_and_unit_and_draws_persistence(figure):
    forecast = figure.axes[0]
    assert forecast.get_title() == "station 1161114011, Room temperature (degC): the last 4 test readings, forecast vs actual"
    assert forecast.get_ylabel() == "degC"
    assert forecast.get_xlabel() == "time of the forecast reading, 2017-04-21 (UTC)"
    assert [line.get_label() for line in forecast.get_lines()] == ["actual", "predicted (elasticnet)", "persistence (latest reading)"]
    assert list(forecast.get_lines()[2].get_ydata()) == [24.5, 25.5, 26.5, 27.5]
    (band,) = forecast.collections  # the interval around the forecast
    assert band.get_label() == "interval"


def test_one_predicted_vs_actual_panel_per_sensor_in_its_unit_with_y_equals_x(figure):
    panels = figure.axes[1::2]
    assert [axes.get_title() for axes in panels] == [
        "Room temperature: predicted vs actual",
        "Load of power grid: predicted vs actual",
        "parameter 999: predicted vs actual",
    ]
    assert [(axes.get_xlabel(), axes.get_ylabel()) for axes in panels] == [
        ("actual (degC)", "predicted (degC)"),
        ("actual (A)", "predicted (A)"),
        ("actual (unit unknown)", "predicted (unit unknown)"),
    ]
    for axes in panels:
        (diagonal,) = [line for line in axes.get_lines() if line.get_label() == "y = x"]
        assert list(diagonal.get_xdata()) == list(diagonal.get_ydata()) == list(axes.get_xlim()) == list(axes.get_ylim())
    assert len(panels[1].collections[0].get_offsets()) == 100  # every test example of the sensor, not a sample


def test_scores_are_printed_in_the_sensor_unit_and_a_loss_to_persistence_is_flagged(figure):
    room, load, unknown = figure.axes[1::2]
    assert texts(room) == ["8 examples\nrmse 0.5 degC\npersistence rmse 1 degC\nskill +50.0%"]
    assert texts(load) == ["100 examples\nrmse 0.75 A\npersistence rmse 0.5 A\nskill -50.0%  WORSE THAN PERSISTENCE"]
    assert load.texts[0].get_color() == "tab:red"
    assert texts(unknown) == []  # no scores given for it: nothing made up


def test_residual_panels_are_in_the_sensor_unit_and_label_the_clipped_tails(figure):
    room, load, unknown = figure.axes[2::2]
    assert [axes.get_title() for axes in (room, load, unknown)] == [
        "Room temperature: residuals",
        "Load of power grid: residuals",
        "parameter 999: residuals",
    ]
    assert [axes.get_xlabel() for axes in (room, load, unknown)] == [
        "predicted - actual (degC)",
        "predicted - actual (A)",
        "predicted - actual (unit unknown)",
    ]
    assert texts(load) == ["clipped: 1 (1.0%) beyond \u00b10.595 A"]
    assert sum(bar.get_height() for bar in load.patches) == 99  # the clipped residual is counted in the label, not drawn
    assert texts(room) == ["clipped: 0 (0.0%) beyond \u00b10.5 degC"]


def test_more_than_four_sensors_wrap_into_another_row_of_panels(catalogue):
    test = pd.concat([scored_test().assign(parameter_id=pid) for pid in [111, 112, 113, 114, 115]], ignore_index=True)
    tables, series_key = plot_tables(test, catalogue)
    figure = evaluation_figure(test, tables["forecast.csv"], series_key, catalogue, {}, "ridge")
    assert len(figure.axes) == 1 + 2 * 5
    assert figure.axes[9].get_title() == "Humidity: predicted vs actual"
    assert figure.axes[9].get_subplotspec().rowspan.start == 3  # below the first four sensors' residual row
    plt.close(figure)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_png_is_the_same_bytes_for_the_same_inputs(catalogue, tmp_path):
    test = scored_test()
    tables, series_key = plot_tables(test, catalogue)
    paths = [tmp_path / "a" / "evaluation.png", tmp_path / "b" / "evaluation.png"]
    for path in paths:
        plot_evaluation(test, tables["forecast.csv"], series_key, catalogue, SCORES, "elasticnet", path)
    first, second = (path.read_bytes() for path in paths)
    assert first == second
    assert png_size(first) == (1280, 928)  # 16 x 11.6 inches at 80 dpi
    assert b"Software" not in first and b"matplotlib" not in first  # no version stamp


def test_plot_tables_hold_the_columns_dvc_yaml_plots_read(catalogue):
    tables, series_key = plot_tables(scored_test(), catalogue)
    assert series_key == (1161114011, 111)
    for definition in yaml.safe_load((PROJECT / "dvc.yaml").read_text())["plots"]:
        if isinstance(definition, dict):
            ((_, spec),) = definition.items()
            for path, fields in spec["y"].items():
                columns = set(tables[path.removeprefix("plots/")].columns)
                assert {spec["x"], *([fields] if isinstance(fields, str) else fields)} <= columns, path
    assert list(tables["forecast.csv"].columns) == ["target_time", "actual", "predicted", "lower", "upper", "persistence"]
    assert tables["forecast.csv"]["target_time"].iloc[0] == "2017-04-21 10:00:00"
    assert list(tables["predicted_vs_actual.csv"].columns) == ["actual", "predicted", "parameter_id", "sensor", "unit"]
    assert set(tables["predicted_vs_actual.csv"]["unit"]) == {"degC", "A", "unit unknown"}
    assert list(tables["residuals.csv"].columns) == ["residual", "count", "clipped"]
    assert tables["residuals.csv"]["count"].sum() == 109


def test_horizon_view_names_one_horizons_columns_as_the_figure_reads_them():
    frame = pd.DataFrame(
        {
            "station_id": [1],
            "parameter_id": [122],
            "lag_1": [10.0],
            "target_h5": [12.0],
            "target_time_h5": [pd.Timestamp("2017-04-21 10:05")],
            "forecast_h5": [11.0],
            "lower_h5": [9.0],
            "upper_h5": [13.0],
            "target_h1": [99.0],
        }
    )
    view = horizon_view(frame, 5)
    assert view.iloc[0].to_dict() == {
        "station_id": 1,
        "parameter_id": 122,
        "lag_1": 10.0,
        "target_time": pd.Timestamp("2017-04-21 10:05"),
        "target": 12.0,
        "predicted": 11.0,
        "lower": 9.0,
        "upper": 13.0,
    }
