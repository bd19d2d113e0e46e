"""The evaluation figure and the CSVs `dvc plots` draws: the test split per sensor, each in its own unit.

Deterministic by construction (fixed size and dpi, no software version in
the PNG), so the same scores give the same bytes in git.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from bts.data.catalogue import Sensor
from bts.horizons import FORECAST, LOWER, UPPER, output_column, target_column, target_time_column

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

# plots/: the forecast of one test series (its last readings), a sample of predicted vs actual, the residual histogram.
FORECAST_READINGS = 120
SCATTER_SAMPLE = 2000
RESIDUAL_BINS = 41
RESIDUAL_QUANTILE = 0.99  # a histogram spans +-(this quantile of |residual|); residuals beyond are counted as clipped
SENSORS_PER_ROW = 4
TEXT_BOX = {"facecolor": "white", "edgecolor": "0.8", "alpha": 0.85, "boxstyle": "round,pad=0.3"}
COLORS = {"actual": "black", "predicted": "tab:blue", "persistence": "tab:orange", "worse": "tab:red"}


def horizon_view(frame: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """The examples as the figure and the CSVs read one horizon: its target and target_time, the forecast (predicted)
    and its interval (lower, upper), beside station_id, parameter_id and lag_1."""
    return frame[["station_id", "parameter_id", "lag_1"]].assign(
        target_time=frame[target_time_column(horizon)],
        target=frame[target_column(horizon)],
        predicted=frame[output_column(FORECAST, horizon)],
        lower=frame[output_column(LOWER, horizon)],
        upper=frame[output_column(UPPER, horizon)],
    )


def residual_bins(residuals: np.ndarray, bins: int = RESIDUAL_BINS, quantile: float = RESIDUAL_QUANTILE) -> tuple[pd.DataFrame, float]:
    """A residual histogram over +-limit (limit = that quantile of |residual|, 1 if it is 0), and the limit.

    Columns: `residual` (bin centre), `count` (residuals beyond +-limit are counted in the end bins) and `clipped`
    (how many of a bin's count lie beyond +-limit: non-zero in the end bins only).
    """
    residuals = np.asarray(residuals, dtype=float)
    limit = (float(np.quantile(np.abs(residuals), quantile)) if len(residuals) else 0.0) or 1.0
    counts, edges = np.histogram(np.clip(residuals, -limit, limit), bins=bins, range=(-limit, limit))
    clipped = np.zeros(bins, dtype="int64")
    clipped[0] += int((residuals < -limit).sum())
    clipped[-1] += int((residuals > limit).sum())
    return pd.DataFrame({"residual": np.round((edges[:-1] + edges[1:]) / 2, 4), "count": counts, "clipped": clipped}), limit


def sensor_label(parameter_id: int, catalogue: dict[int, Sensor]) -> tuple[str, str]:
    """(name, unit) of a parameter from the catalogue; a parameter it lacks is named by its id."""
    sensor = catalogue.get(int(parameter_id))
    return (sensor.name, sensor.unit) if sensor else (f"parameter {parameter_id}", "unit unknown")


def _number(value: float) -> str:
    return f"{value:.3g}"


def _plot_forecast(axes: plt.Axes, series: pd.DataFrame, station: int, parameter: int, catalogue: dict[int, Sensor], model: str) -> None:
    name, unit = sensor_label(parameter, catalogue)
    times = pd.to_datetime(series["target_time"])
    axes.plot(times, series["actual"], color=COLORS["actual"], linewidth=1.2, marker=".", markersize=4, label="actual")
    axes.fill_between(times, series["lower"], series["upper"], color=COLORS["predicted"], alpha=0.15, linewidth=0, label="interval")
    axes.plot(times, series["predicted"], color=COLORS["predicted"], linewidth=1, label=f"predicted ({model})")
    axes.plot(times, series["persistence"], color=COLORS["persistence"], linewidth=1, linestyle="--", label="persistence (latest reading)")
    first, last = times.min(), times.max()
    one_day = first.normalize() == last.normalize()
    axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if one_day else "%m-%d %H:%M"))
    axes.set_title(f"station {station}, {name} ({unit}): the last {len(series)} test readings, forecast vs actual")
    axes.set_xlabel(f"time of the forecast reading, {first:%Y-%m-%d} (UTC)" if one_day else "time of the forecast reading (UTC)")
    axes.set_ylabel(unit)
    axes.legend(loc="upper left", ncols=3, fontsize="small")


def _plot_predicted_vs_actual(axes: plt.Axes, part: pd.DataFrame, name: str, unit: str, scores: dict) -> None:
    actual, predicted = part["target"].to_numpy(), part["predicted"].to_numpy()
    low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
    pad = (high - low) * 0.05 or 0.5
    limits = (low - pad, high + pad)
    axes.scatter(actual, predicted, s=5, alpha=0.15, linewidths=0, color=COLORS["predicted"])
    axes.plot(limits, limits, color="black", linewidth=0.8, linestyle="--", label="y = x")
    axes.set_xlim(limits)
    axes.set_ylim(limits)
    axes.set_aspect("equal", adjustable="box")
    axes.set_title(f"{name}: predicted vs actual", fontsize="medium")
    axes.set_xlabel(f"actual ({unit})")
    axes.set_ylabel(f"predicted ({unit})")
    axes.legend(loc="lower right", fontsize="small")
    if scores:
        worse = scores["skill"] < 0
        text = (
            f"{len(part)} examples\nrmse {_number(scores['rmse'])} {unit}\npersistence rmse {_number(scores['persistence_rmse'])} {unit}\n"
            f"skill {scores['skill']:+.1%}"
            + ("  WORSE THAN PERSISTENCE" if worse else "")
            + (
                f"\ninterval holds {scores['coverage']:.1%}, mean width {_number(scores['mean_width'])} {unit}"
                if "coverage" in scores
                else ""
            )
        )
        color = COLORS["worse"] if worse else "black"
        axes.text(0.03, 0.97, text, transform=axes.transAxes, va="top", fontsize="small", color=color, bbox=TEXT_BOX)


def _plot_residuals(axes: plt.Axes, part: pd.DataFrame, name: str, unit: str) -> None:
    table, limit = residual_bins((part["predicted"] - part["target"]).to_numpy())
    axes.bar(table["residual"], table["count"] - table["clipped"], width=2 * limit / len(table) * 0.9, color=COLORS["predicted"])
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlim(-limit * 1.05, limit * 1.05)
    clipped = int(table["clipped"].sum())
    share = clipped / len(part) if len(part) else 0.0
    label = f"clipped: {clipped} ({share:.1%}) beyond \u00b1{_number(limit)} {unit}"
    axes.text(0.03, 0.97, label, transform=axes.transAxes, va="top", fontsize="small", bbox=TEXT_BOX)
    axes.set_ylim(0, max(1, int(table["count"].sub(table["clipped"]).max())) * 1.2)  # room for the label above the bars
    axes.set_title(f"{name}: residuals", fontsize="medium")
    axes.set_xlabel(f"predicted - actual ({unit})")
    axes.set_ylabel("test examples")


def evaluation_figure(
    test: pd.DataFrame,
    series: pd.DataFrame,
    series_key: tuple[int, int],
    catalogue: dict[int, Sensor],
    scores: dict[str, dict],
    model: str,
    horizon: int = 1,
) -> plt.Figure:
    """The test split in one figure: a forecast over time (one series), then per sensor, in its own unit,
    predicted vs actual (with y = x) above its residual histogram (clipped tails counted).

    `test` holds station_id, parameter_id, target_time, target, predicted, lower and upper of one horizon; `series`
    target_time, actual, predicted, lower, upper and persistence of the (station_id, parameter_id) `series_key`;
    `scores` that horizon's test scores per parameter id (a string, as in by_parameter.json).
    """
    parameters = sorted(int(p) for p in test["parameter_id"].unique())
    blocks = max(1, math.ceil(len(parameters) / SENSORS_PER_ROW))
    figure = plt.figure(figsize=(16, 4.4 + 7.2 * blocks), layout="constrained")
    grid = figure.add_gridspec(1 + 2 * blocks, SENSORS_PER_ROW, height_ratios=[1.0] + [1.25, 0.85] * blocks)
    _plot_forecast(figure.add_subplot(grid[0, :]), series, *series_key, catalogue, model)
    for index, parameter in enumerate(parameters):
        row, column = 1 + 2 * (index // SENSORS_PER_ROW), index % SENSORS_PER_ROW
        part = test[test["parameter_id"] == parameter]
        name, unit = sensor_label(parameter, catalogue)
        _plot_predicted_vs_actual(figure.add_subplot(grid[row, column]), part, name, unit, scores.get(str(parameter), {}))
        _plot_residuals(figure.add_subplot(grid[row + 1, column]), part, name, unit)
    first, last = test["target_time"].min(), test["target_time"].max()
    figure.suptitle(
        f"Evaluation on the test split: {model} forecasts of each sensor's reading {horizon} step(s) ahead, with their intervals, "
        "against persistence (the latest reading)\n"
        f"{len(test)} examples, {test['station_id'].nunique()} stations, {len(parameters)} sensors, target times "
        f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC; each sensor in its own unit; skill = 1 - rmse / persistence rmse",
        fontsize="large",
    )
    return figure


def plot_evaluation(
    test: pd.DataFrame,
    series: pd.DataFrame,
    series_key: tuple[int, int],
    catalogue: dict[int, Sensor],
    scores: dict[str, dict],
    model: str,
    path: Path,
    horizon: int = 1,
) -> None:
    """evaluation_figure as a PNG of fixed size and dpi, with no software version in it: same inputs, same bytes."""
    figure = evaluation_figure(test, series, series_key, catalogue, scores, model, horizon)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(figure)


def plot_tables(test: pd.DataFrame, catalogue: dict[int, Sensor]) -> tuple[dict[str, pd.DataFrame], tuple[int, int]]:
    """The CSV files of plots/ that dvc.yaml's plots draw, by file name, and the (station_id, parameter_id) of the forecast.

    forecast.csv: the last readings of the first test series (target_time, actual, predicted, lower, upper, persistence);
    predicted_vs_actual.csv: a sample of test examples (actual, predicted, parameter_id, sensor, unit);
    residuals.csv: the residual histogram of every test example, pooled over sensors (residual, count, clipped).
    """
    station, parameter = min(test.groupby(["station_id", "parameter_id"]).groups)
    one = test[(test["station_id"] == station) & (test["parameter_id"] == parameter)].tail(FORECAST_READINGS)
    series = one.rename(columns={"target": "actual", "lag_1": "persistence"})[
        ["target_time", "actual", "predicted", "lower", "upper", "persistence"]
    ]
    sample = test.sample(n=min(SCATTER_SAMPLE, len(test)), random_state=0).rename(columns={"target": "actual"})
    labels = {pid: sensor_label(pid, catalogue) for pid in sample["parameter_id"].unique()}
    sample = sample[["actual", "predicted", "parameter_id"]].assign(
        sensor=sample["parameter_id"].map(lambda pid: labels[pid][0]), unit=sample["parameter_id"].map(lambda pid: labels[pid][1])
    )
    histogram, _ = residual_bins((test["predicted"] - test["target"]).to_numpy())
    tables = {"forecast.csv": series.astype({"target_time": "str"}), "predicted_vs_actual.csv": sample, "residuals.csv": histogram}
    return {name: table.reset_index(drop=True) for name, table in tables.items()}, (int(station), int(parameter))


def name_sensors(by_parameter: dict, catalogue: dict) -> dict:
    """{split_by_parameter: {parameter_id: {sensor, unit, scores...}}}: per-sensor scores a reader can place."""
    named = {}
    for split, scores in by_parameter.items():
        named[split] = {}
        for pid, values in scores.items():
            sensor = catalogue.get(int(pid))
            named[split][pid] = {"sensor": sensor.name if sensor else "unknown", "unit": sensor.unit if sensor else None, **values}
    return named
