"""What `bts monitor` reports for one served model: its service, the drift of its inputs and its live accuracy.

Everything is read from the monitoring log of `bts serve` (the rows whose
package md5 is the model's), the training run (its feature profile and
offline test metrics) and, for live accuracy, the readings that arrived
after the predictions (a later raw export or clean Parquet). The model's
horizons are those its logged rows forecast (their forecast_h<h>, lower_h<h>
and upper_h<h> columns): a prediction made for a series (station_id,
parameter_id) at its latest reading (reading_id, else reading_time) is
joined, for each horizon h, with the reading h steps later in that series,
the target the model was trained for. Each horizon is scored as evaluate
scores the test split: RMSE, MAE, skill over persistence (the latest
reading, lag_1, scored on the same rows) and the share of readings inside
the interval (coverage, against the coverage it was calibrated for) with its
mean width.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bts.errors import BtsError, ConfigError, first_line
from bts.horizons import FORECAST, KINDS, LOWER, UPPER, label, metric_horizons, metric_name, output_column, output_horizons, target_column
from bts.model.evaluation import BY_PARAMETER, interval_metrics, regression_metrics
from bts.model.profile import drift
from bts.params import MonitorParams
from bts.serving.payload import KEY_COLUMNS, READING_ID, SERIES_COLUMNS, TIME_COLUMN
from bts.serving.request_log import PREDICTIONS, PROCESS, REQUESTS

SERIES = list(SERIES_COLUMNS)
RELATIVE = re.compile(r"^(\d+)([mhd])$")
UNITS = {"m": "minutes", "h": "hours", "d": "days"}
LATENCY_BUCKETS = 120  # at most this many points in the latency-over-time series
OUTPUT_PREFIXES = tuple(f"{kind}_" for kind in KINDS)  # a logged prediction row's output columns: forecast_h1, lower_h1, ...
LIVE_SCORES = ["rmse", "mae", "persistence_rmse", "skill", "coverage", "mean_width", "winkler"]  # per horizon, live and offline
TEST_BY_PARAMETER = f"test{BY_PARAMETER}"
TEST_PARAMETER = re.compile(rf"^{TEST_BY_PARAMETER}\.(\d+)\.")


def parse_time(text: str | None, option: str, now: datetime) -> pd.Timestamp | None:
    """ISO 8601 (naive is UTC) or a span back from now (`30m`, `24h`, `7d`)."""
    if text is None:
        return None
    relative = RELATIVE.match(text)
    if relative:
        return pd.Timestamp(now - timedelta(**{UNITS[relative.group(2)]: int(relative.group(1))}))
    try:
        stamp = pd.Timestamp(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: not a time (ISO 8601 such as 2026-11-27T08:00, or 30m, 24h, 7d back from now)") from None
    return stamp.tz_localize(UTC) if stamp.tzinfo is None else stamp.tz_convert(UTC)


def read_log(
    folder: Path, package_md5: str, since: pd.Timestamp | None, until: pd.Timestamp | None, warn: Callable[[str], None] | None = None
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The log's requests, predictions and process samples of this package, in [since, until), and the files left out.

    Each file is read on its own: one that is not Parquet, is cut short, or lacks the package_md5 and time columns
    every log file has is named to warn (once) and left out, and the report says how many were; the rest is read.
    """
    tables, skipped = {}, []
    for table in (REQUESTS, PREDICTIONS, PROCESS):
        frames = []
        for path in sorted((folder / table).glob("date=*/*.parquet")):
            try:
                if not path.is_file():  # a pipe would be waited on forever, a folder read as a dataset
                    raise ValueError("not a regular file")
                frames.append(_log_file(path, package_md5))
            except (pa.ArrowException, OSError, ValueError) as exc:
                name = path.relative_to(folder).as_posix()
                skipped.append(name)
                if warn is not None:
                    warn(f"{name}: {first_line(exc)}; left out of the report")
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        if not frame.empty:
            keep = np.ones(len(frame), dtype=bool)
            if since is not None:
                keep &= (frame["time"] >= since).to_numpy()
            if until is not None:
                keep &= (frame["time"] < until).to_numpy()
            frame = frame[keep].sort_values("time", kind="stable").reset_index(drop=True)
        tables[table] = frame
    return tables, skipped


def _log_file(path: Path, package_md5: str) -> pd.DataFrame:
    """One log file's rows of this package; a ValueError when it lacks what every log file holds."""
    schema = pq.read_schema(path)
    if "package_md5" not in schema.names or "time" not in schema.names or not pa.types.is_timestamp(schema.field("time").type):
        raise ValueError("lacks the package_md5 and time (timestamp) columns of a log file")
    return pq.read_table(path, filters=[("package_md5", "==", package_md5)]).to_pandas()


def percentile(values: pd.Series, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def service(requests: pd.DataFrame, predictions: pd.DataFrame, process: pd.DataFrame) -> dict:
    """Requests, errors by kind, latency percentiles, throughput, and the cost per 1,000 predictions."""
    failed = requests[requests["status"] >= 400]
    span = (requests["time"].iloc[-1] - requests["time"].iloc[0]).total_seconds() if len(requests) > 1 else 0.0
    cpu = sum(group["cpu_seconds"].max() - group["cpu_seconds"].min() for _, group in process.groupby("pid")) if len(process) else 0.0
    scored = len(predictions)
    return {
        "requests": len(requests),
        "failed": len(failed),
        "error_rate": round(len(failed) / len(requests), 6),
        "errors_by_code": {str(code): int(n) for code, n in error_codes(failed).value_counts().items()},
        "predictions": scored,
        "first_request": requests["time"].iloc[0].isoformat(),
        "last_request": requests["time"].iloc[-1].isoformat(),
        "latency_ms": {f"p{q}": percentile(requests["latency_ms"], q) for q in (50, 95, 99)},
        "requests_per_second": round(len(requests) / span, 3) if span > 0 else None,
        "predictions_per_second": round(scored / span, 3) if span > 0 else None,
        "cost": {
            "server_processes": int(process["pid"].nunique()) if len(process) else 0,
            "cpu_seconds": round(float(cpu), 3),
            "cpu_seconds_per_1000_predictions": round(float(cpu) / scored * 1000, 4) if scored and cpu > 0 else None,
            "peak_memory_mb": round(float(process["peak_rss_bytes"].max()) / 2**20, 1) if len(process) else None,
        },
    }


def error_codes(failed: pd.DataFrame) -> pd.Series:
    """The server's error code of each failed request, or HTTP_<status> where it gave none."""
    return failed["error_code"].fillna("HTTP_" + failed["status"].astype(str))


def latency_series(requests: pd.DataFrame) -> list[dict]:
    """Requests and latency p50/p95 per time bucket (a minute, or wider so that there are at most LATENCY_BUCKETS)."""
    span = (requests["time"].iloc[-1] - requests["time"].iloc[0]).total_seconds()
    width = max(60, int(np.ceil(span / LATENCY_BUCKETS / 60)) * 60) if span > 600 else max(1, int(np.ceil(span / 60)))
    buckets = requests.groupby(requests["time"].dt.floor(f"{width}s"))
    return [
        {
            "time": stamp.isoformat(),
            "requests": len(group),
            "failed": int((group["status"] >= 400).sum()),
            "p50_ms": percentile(group["latency_ms"], 50),
            "p95_ms": percentile(group["latency_ms"], 95),
        }
        for stamp, group in buckets
    ]


def utc_ns(times: pd.Series) -> pd.Series:
    """Times as UTC nanoseconds (clean data holds naive UTC; the log, aware microseconds), so keys compare equal."""
    times = times if times.dt.tz is not None else times.dt.tz_localize(UTC)
    return times.astype("datetime64[ns, UTC]")


def model_horizons(predictions: pd.DataFrame, package_md5: str) -> list[int]:
    """The horizons the model's logged rows forecast, read from their output columns (forecast_h1, lower_h1, upper_h1, ...)."""
    outputs = [column for column in predictions.columns if column.startswith(OUTPUT_PREFIXES)]
    try:
        return output_horizons(outputs)
    except ValueError:
        shown = ", ".join(outputs) or "none"
        raise BtsError(
            f"the monitoring log's predictions of package {package_md5} hold no forecast, lower and upper column per horizon "
            f"(output columns: {shown}; a log of an older `bts serve`?): live accuracy cannot be measured, leave out --actuals"
        ) from None


def next_readings(actuals: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """Per reading of the actuals (its series, id and time): per horizon h, the reading h steps later in its series
    (target_h<h>, as the model was trained for; missing where the series ends sooner)."""
    ordered = actuals.sort_values([*SERIES, TIME_COLUMN, "id"], kind="stable")
    values = ordered.groupby(SERIES, sort=False)["value"]
    frame = ordered[[*SERIES, "id", TIME_COLUMN]].rename(columns={"id": READING_ID})
    frame = frame.assign(**{target_column(h): values.shift(-h) for h in horizons})
    frame[TIME_COLUMN] = utc_ns(frame[TIME_COLUMN])
    return frame


def join_actuals(predictions: pd.DataFrame, actuals: pd.DataFrame, horizons: list[int]) -> tuple[pd.DataFrame, int]:
    """Predictions found among the actuals, with the reading each horizon later (target_h<h>, missing where the series
    ends sooner), and how many predictions carried no key to join on.

    A prediction is joined by its series and reading_id; one without reading_id by its series and reading_time, when
    exactly one reading of the series has that time (two readings in the same second leave the time ambiguous).
    """
    later = next_readings(actuals, horizons)
    targets = [target_column(h) for h in horizons]
    series_known = predictions[SERIES].notna().all(axis=1)
    by_id = series_known & predictions[READING_ID].notna()
    by_time = series_known & ~by_id & predictions[TIME_COLUMN].notna()
    parts = []
    for mask, keys, candidates in (
        (by_id, [*SERIES, READING_ID], later),
        (by_time, [*SERIES, TIME_COLUMN], later.drop_duplicates([*SERIES, TIME_COLUMN], keep=False)),
    ):
        chosen = predictions[mask].drop(columns=[k for k in KEY_COLUMNS if k not in keys])
        chosen = chosen.astype({column: "int64" for column in keys if column != TIME_COLUMN})
        if TIME_COLUMN in keys:
            chosen[TIME_COLUMN] = utc_ns(chosen[TIME_COLUMN])
        parts.append(chosen.merge(candidates[[*keys, *targets]], on=keys, how="inner"))
    return pd.concat(parts, ignore_index=True), int((~(by_id | by_time)).sum())


def scores(frame: pd.DataFrame, horizon: int, coverage: float) -> dict:
    """One horizon's live scores on the rows of frame, as evaluate scores a split: the forecast's RMSE and MAE,
    persistence's RMSE (lag_1 for the reading `horizon` steps later), the skill over it, and the intervals' coverage,
    mean width and Winkler score at the target coverage."""
    from bts.model.forecasters import PERSISTENCE  # imports scikit-learn: only when there is live accuracy to score

    actual = frame[target_column(horizon)].to_numpy(dtype=float)
    forecast, lower, upper = (frame[output_column(kind, horizon)].to_numpy(dtype=float) for kind in (FORECAST, LOWER, UPPER))
    model = regression_metrics(actual, forecast)
    persistence_rmse = regression_metrics(actual, frame[PERSISTENCE].to_numpy(dtype=float))["rmse"]
    intervals = interval_metrics(actual, lower, upper, coverage)
    return {
        "rows": len(frame),
        "rmse": round(model["rmse"], 6),
        "mae": round(model["mae"], 6),
        "persistence_rmse": round(persistence_rmse, 6),
        "skill": round(1 - model["rmse"] / persistence_rmse, 6) if persistence_rmse > 0 else None,
        **{name: round(value, 6) for name, value in intervals.items()},
    }


def below_threshold(row: dict | None, params: MonitorParams) -> bool:
    """Skill judged (enough rows, a defined skill) and below monitor.skill_threshold."""
    return bool(row and row["rows"] >= params.min_rows and row["skill"] is not None and row["skill"] < params.skill_threshold)


def horizon_accuracy(
    joined: pd.DataFrame, predictions: int, without_keys: int, horizon: int, coverage: float, catalogue: dict, params: MonitorParams
) -> dict:
    """One horizon's live accuracy: the joined rows that have the reading `horizon` steps later, scored overall and per
    series; the series (and the whole) whose skill fell below the threshold are flagged."""
    rows = joined[joined[target_column(horizon)].notna()]
    result = {
        "horizon": horizon,
        "joined": len(rows),
        "without_later_reading": predictions - without_keys - len(rows),
        "joined_share": round(len(rows) / predictions, 6) if predictions else 0.0,
        "overall": scores(rows, horizon, coverage) if len(rows) else None,
        "by_series": [],
        "flagged": [],
    }
    for (station, parameter), group in rows.groupby(SERIES, sort=True):
        sensor = catalogue.get(int(parameter))
        row = {
            "station_id": int(station),
            "parameter_id": int(parameter),
            "sensor": sensor.name if sensor else None,
            "unit": sensor.unit if sensor else None,
            **scores(group, horizon, coverage),
        }
        row["flagged"] = below_threshold(row, params)
        result["by_series"].append(row)
        if row["flagged"]:
            result["flagged"].append(series_name(row))
    result["overall_flagged"] = below_threshold(result["overall"], params)
    return result


def series_name(row: dict) -> str:
    return f"station {row['station_id']} {row['sensor'] or row['parameter_id']}"


def live_accuracy(
    predictions: pd.DataFrame, actuals: pd.DataFrame, horizons: list[int], coverage: float, catalogue: dict, params: MonitorParams
) -> dict:
    """Predictions joined, for each horizon h of the model, with the reading that came h steps later in their series:
    per horizon (by_horizon, keyed h1, h5, ...) live RMSE, MAE, skill over persistence, interval coverage (against the
    target coverage) and mean width, overall and per series."""
    joined, without_keys = join_actuals(predictions, actuals, horizons) if len(predictions) else (predictions, 0)
    return {
        "predictions": len(predictions),
        "without_keys": without_keys,
        "horizons": horizons,
        "target_coverage": coverage,
        "by_horizon": {
            label(h): horizon_accuracy(joined, len(predictions), without_keys, h, coverage, catalogue, params) for h in horizons
        },
    }


def offline_metrics(run_metrics: dict[str, float]) -> dict:
    """The training run's test scores per horizon, overall and per parameter (as `evaluate` logged them)."""
    horizons = metric_horizons(run_metrics)
    parameters = sorted({int(m.group(1)) for m in map(TEST_PARAMETER.match, run_metrics) if m})
    return {
        "horizons": horizons,
        "by_horizon": {label(h): {score: run_metrics.get(metric_name("test", h, score)) for score in LIVE_SCORES} for h in horizons},
        "by_parameter": {
            str(pid): {
                label(h): {score: run_metrics.get(metric_name(f"{TEST_BY_PARAMETER}.{pid}", h, score)) for score in LIVE_SCORES}
                for h in horizons
            }
            for pid in parameters
        },
    }


def drift_report(profile: dict | None, predictions: pd.DataFrame, params: MonitorParams) -> dict:
    if profile is None:
        return {"judged": False, "reason": "the training run has no feature profile", "features": [], "drifted": []}
    if len(predictions) < params.min_rows:
        reason = f"{len(predictions)} live rows, fewer than monitor.min_rows ({params.min_rows})"
        return {"judged": False, "reason": reason, "features": [], "drifted": []}
    rows = drift(profile, predictions, params.psi_threshold, params.ks_p_value, params.ignore_features)
    return {"judged": True, "reason": None, "features": rows, "drifted": [row["feature"] for row in rows if row["drifted"]]}


def build_report(
    model: dict,
    log: dict[str, pd.DataFrame],
    profile: dict | None,
    run_metrics: dict[str, float],
    actuals: pd.DataFrame | None,
    coverage: float,
    catalogue: dict,
    params: MonitorParams,
    window: dict,
) -> dict:
    """The report; live accuracy (at each horizon the logged rows forecast, against the coverage the intervals were
    calibrated for) only when actuals are given."""
    requests, predictions, process = log[REQUESTS], log[PREDICTIONS], log[PROCESS]
    if requests.empty:
        raise BtsError(f"{model['reference']}: no request for package {model['package_md5']} in the monitoring log {window['log']}")
    live = None
    if actuals is not None:
        horizons = model_horizons(predictions, model["package_md5"]) if len(predictions) else []
        live = live_accuracy(predictions, actuals, horizons, coverage, catalogue, params)
    report = {
        "model": model,
        "window": window,
        "thresholds": params.model_dump(),
        "service": service(requests, predictions, process),
        "latency_over_time": latency_series(requests),
        "drift": drift_report(profile, predictions, params),
        "offline": offline_metrics(run_metrics),
        "live": live,
    }
    report["alerts"] = alerts(report)
    return report


def flagged_horizons(live: dict | None) -> list[dict]:
    """The horizons whose live skill fell below the threshold, overall or on a series."""
    if live is None:
        return []
    return [scored for scored in live["by_horizon"].values() if scored["overall_flagged"] or scored["flagged"]]


def alerts(report: dict) -> list[str]:
    """One line per thing a person should look at; a line on live skill names the horizons it fell at."""
    lines = []
    drifted = [row for row in report["drift"]["features"] if row["drifted"]]
    if drifted:
        lines.append("input drift: " + ", ".join(f"{row['feature']} (PSI {row['psi']:.2f})" for row in drifted))
    live, threshold = report["live"], report["thresholds"]["skill_threshold"]
    if live is None:
        return lines
    overall = [scored for scored in live["by_horizon"].values() if scored["overall_flagged"]]
    if overall:
        at = ", ".join(f"{label(scored['horizon'])} ({scored['overall']['skill']:+.1%})" for scored in overall)
        lines.append(f"live skill over persistence below {threshold:+.1%} at {at}")
    series: dict[str, list[str]] = {}  # a series' name -> the horizons it is flagged at, in the order met
    scored_series = set()
    for scored in live["by_horizon"].values():
        scored_series.update(series_name(row) for row in scored["by_series"])
        for name in scored["flagged"]:
            series.setdefault(name, []).append(label(scored["horizon"]))
    if series:
        named = [f"{name} ({', '.join(at)})" for name, at in series.items()]
        shown = ", ".join(named[:3]) + (", ..." if len(named) > 3 else "")
        lines.append(f"live skill below {threshold:+.1%} on {len(series)} of {len(scored_series)} series: {shown}")
    return lines
