"""The `bts monitor` report as one self-contained HTML page: tables, and plots embedded as PNG data.

Three plots: requests and latency over time; drift per feature (population
stability index against its threshold); live against offline error per
sensor, a panel per horizon. Live accuracy is a table per horizon (error,
skill over persistence, the intervals' coverage against the coverage they
were calibrated for, their width) beside the run's test scores, then one
row per series and horizon. Nothing is fetched from elsewhere, so the page
opens anywhere (a browser, the MLflow UI's artifact view, an email).
"""

from __future__ import annotations

import base64
import io
from html import escape

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt

from bts.horizons import label

SERVICE_COLUMNS = [
    "requests", "failed", "error rate", "predictions", "p50 ms", "p95 ms", "p99 ms", "requests/s",
    "CPU s / 1,000 predictions", "peak memory MB",
]  # fmt: skip
COLORS = {"live": "tab:blue", "offline": "0.55", "persistence": "tab:orange", "alert": "tab:red", "ok": "tab:green"}
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #eee; text-align: right; }
th { background: #f6f6f6; } td:first-child, th:first-child, table.text td { text-align: left; }
.alert { color: #b00; font-weight: bold; } .ok { color: #070; } .muted { color: #777; }
img { max-width: 100%; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


FLAGGED = "FLAGGED"  # the verdict of a series whose live skill fell below the threshold
SCORE_COLUMNS = ["RMSE", "MAE", "persistence RMSE", "skill", "coverage", "mean width"]  # score_cells' columns


def png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def legend_outside(axes: plt.Axes) -> None:
    """The legend to the right of the plot, where it covers no bar or line."""
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def latency_figure(series: list[dict]) -> plt.Figure:
    frame = pd.DataFrame(series)
    times = pd.to_datetime(frame["time"])
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True, height_ratios=[1, 1.4])
    width = (times.diff().median() if len(times) > 1 else pd.Timedelta(seconds=1)) * 0.8
    top.bar(times, frame["requests"], width=width, color=COLORS["live"], label="requests")
    top.bar(times, frame["failed"], width=width, color=COLORS["alert"], label="failed (4xx/5xx)")
    top.set_ylabel("requests")
    legend_outside(top)
    bottom.plot(times, frame["p50_ms"], marker=".", color=COLORS["live"], label="p50")
    bottom.plot(times, frame["p95_ms"], marker=".", color=COLORS["persistence"], label="p95")
    bottom.set_ylabel("latency (ms)")
    bottom.set_ylim(bottom=0)
    legend_outside(bottom)
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M:%S"))
    figure.autofmt_xdate()
    figure.suptitle("Requests and latency over time (UTC)")
    return figure


def drift_figure(features: list[dict], threshold: float) -> plt.Figure:
    names = [row["feature"] for row in features]
    values = [row["psi"] for row in features]
    colors = [COLORS["offline"] if row["ignored"] else COLORS["alert"] if row["drifted"] else COLORS["ok"] for row in features]
    figure, axes = plt.subplots(figsize=(10, 0.3 * len(names) + 1.2))
    axes.barh(names, np.maximum(values, 1e-4), color=colors)
    axes.axvline(threshold, color=COLORS["alert"], linestyle="--", label=f"threshold {threshold:g}")
    axes.set_xscale("log")
    axes.invert_yaxis()
    axes.set_xlabel("population stability index against the train split (log scale; grey: ignored, red: drifted)")
    legend_outside(axes)
    axes.set_title("Input drift per feature")
    return figure


def accuracy_figure(live: dict, offline: dict) -> plt.Figure:
    """Per horizon (a panel each), per sensor: live RMSE, live persistence RMSE and the run's offline test RMSE."""
    scored = [entry for entry in live["by_horizon"].values() if entry["by_series"]]
    figure, panels = plt.subplots(len(scored), 1, figsize=(10, 3.2 * len(scored) + 0.6), squeeze=False)
    for axes, entry in zip(panels[:, 0], scored, strict=True):
        horizon_panel(axes, entry, offline)
    legend_outside(panels[0, 0])
    figure.suptitle("Live against offline error per sensor")
    figure.tight_layout()
    return figure


def horizon_panel(axes: plt.Axes, entry: dict, offline: dict) -> None:
    key = label(entry["horizon"])
    rows = pd.DataFrame(entry["by_series"])
    by_parameter = rows.groupby(["parameter_id", "sensor", "unit"], dropna=False).apply(
        lambda g: pd.Series({"live": np.sqrt(np.average(g["rmse"] ** 2, weights=g["rows"])),
                             "persistence": np.sqrt(np.average(g["persistence_rmse"] ** 2, weights=g["rows"]))}),
        include_groups=False,
    ).reset_index()  # fmt: skip
    labels = [f"{row.sensor or row.parameter_id}\n({row.unit})" for row in by_parameter.itertuples()]
    offline_rmse = [
        (offline["by_parameter"].get(str(pid), {}).get(key) or {}).get("rmse") or np.nan for pid in by_parameter["parameter_id"]
    ]
    x = np.arange(len(labels))
    bars = [
        axes.bar(x - 0.27, by_parameter["live"], 0.27, color=COLORS["live"], label="live RMSE"),
        axes.bar(x, by_parameter["persistence"], 0.27, color=COLORS["persistence"], label="live persistence RMSE"),
        axes.bar(x + 0.27, offline_rmse, 0.27, color=COLORS["offline"], label="offline test RMSE"),
    ]
    for group in bars:
        axes.bar_label(group, fmt="%.3g", fontsize=7)
    axes.set_xticks(x, labels, fontsize=8)
    # Live and offline errors can differ fifty-fold: on a log axis from a decade below the smallest, every bar shows.
    values = np.concatenate([by_parameter["live"], by_parameter["persistence"], offline_rmse])
    smallest = np.nanmin(values[values > 0]) if (values > 0).any() else 1.0
    axes.set_yscale("log")
    axes.set_ylim(bottom=10 ** np.floor(np.log10(smallest) - 0.5), top=np.nanmax(values) * 3)  # room for the labels
    axes.set_ylabel("RMSE (unit, log scale)")
    axes.set_title(f"{key}: {entry['horizon']} step(s) ahead", fontsize=10)


def table(header: list[str] | None, rows: list[list], classes: list[str] | None = None, flag_cells: str | None = None) -> str:
    """A table of numbers (right-aligned); with no header, a two-column table of text (left-aligned). Rows take their
    class from classes; a cell whose text is flag_cells is marked alone (a flagged row stays readable)."""
    if header is None:
        body = "".join(f"<tr><th>{escape(cell_text(k))}</th><td>{escape(cell_text(v))}</td></tr>" for k, v in rows)
        return f'<table class="text">{body}</table>'
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{escape((classes or [""] * len(rows))[i])}">' + "".join(cell(c, flag_cells) for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def cell(value: object, flag: str | None) -> str:
    text = escape(cell_text(value))
    return f'<td class="alert">{text}</td>' if flag is not None and value == flag else f"<td>{text}</td>"


def cell_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def when(iso: str | None) -> str | None:
    """An ISO time as `2026-11-27 08:10:28 UTC` (to the second)."""
    return None if iso is None else pd.Timestamp(iso).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S UTC")


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def verdict(scored: dict) -> str:
    return FLAGGED if scored["flagged"] else "ok"


def score_cells(scores: dict) -> list:
    """RMSE, MAE, persistence RMSE, skill, coverage and mean width of live or offline scores ("-" where missing)."""
    return [scores.get("rmse"), scores.get("mae"), scores.get("persistence_rmse"), percent(scores.get("skill")),
            share(scores.get("coverage")), scores.get("mean_width")]  # fmt: skip


def live_section(live: dict, offline: dict) -> list[str]:
    """Live accuracy per horizon beside the run's test scores, the plot, then every series at every horizon."""
    if not live["by_horizon"]:
        return [f'<p class="muted">None of the {live["predictions"]} predictions to join with later readings.</p>']
    joined = "; ".join(f"{key}: {entry['joined']} ({entry['joined_share']:.1%})" for key, entry in live["by_horizon"].items())
    intro = (
        f"Each of the {live['predictions']} predictions is joined, for each horizon h, with the reading h steps later in its "
        f"series ({live['without_keys']} without key columns). Joined: {joined}. Coverage: the share of those readings inside "
        f"the interval, calibrated to hold {live['target_coverage']:.1%} of them."
    )
    parts = [f"<p>{escape(intro)}</p>"]
    header = ["horizon", "", "rows", *SCORE_COLUMNS, "target coverage", "verdict"]
    rows, classes = [], []
    for key, entry in live["by_horizon"].items():
        overall, test = entry["overall"] or {}, offline["by_horizon"].get(key, {})
        judged = (FLAGGED if entry["overall_flagged"] else "ok") if overall else None
        rows.append([key, "live", entry["joined"], *score_cells(overall), share(live["target_coverage"]), judged])
        rows.append(["", "offline (test split)", None, *score_cells(test), None, None])
        classes += ["", "muted"]
    parts.append(table(header, rows, classes, flag_cells=FLAGGED))
    if any(entry["by_series"] for entry in live["by_horizon"].values()):
        parts.append(f'<img alt="live against offline error" src="{png(accuracy_figure(live, offline))}">')
    series = sorted(
        ((row, entry["horizon"]) for entry in live["by_horizon"].values() for row in entry["by_series"]),
        key=lambda item: (item[0]["station_id"], item[0]["parameter_id"], item[1]),
    )
    rows = [[r["station_id"], r["sensor"] or r["parameter_id"], r["unit"], label(h), r["rows"], *score_cells(r), verdict(r)]
            for r, h in series]  # fmt: skip
    parts.append(table(["station", "sensor", "unit", "horizon", "rows", *SCORE_COLUMNS, "verdict"], rows, flag_cells=FLAGGED))
    return parts


def render(report: dict) -> str:
    model, service, drift, live = report["model"], report["service"], report["drift"], report["live"]
    title = f"Monitoring report: {model['label']}"
    parts = [f"<h1>{escape(title)}</h1>"]
    window = report["window"]
    since, until = when(window["since"]) or "the start of the log", when(window["until"]) or "now"
    period = f"Requests {when(service['first_request'])} to {when(service['last_request'])} (window: {since} to {until})"
    parts.append(f"<p>{escape(period)}; generated {escape(when(window['generated']))}.</p>")
    identity = [
        ["reference", model["reference"]],
        ["package md5", model["package_md5"]],
        ["training run", model["run_id"]],
        ["commit", model["git_commit"]],
        *model["lineage"].items(),
    ]
    parts.append("<h2>Model and lineage</h2>" + table(None, identity))
    alerts = report["alerts"]
    parts.append("<h2>Alerts</h2>")
    parts.append("<ul>" + "".join(f'<li class="alert">{escape(a)}</li>' for a in alerts) + "</ul>" if alerts else '<p class="ok">None.</p>')
    if report.get("retrain"):
        parts.append(f"<p>To retrain with these readings (promoted only if it wins): <code>{escape(report['retrain'])}</code></p>")
    cost = service["cost"]
    parts.append("<h2>Service</h2>")
    parts.append(
        table(
            SERVICE_COLUMNS,
            [[service["requests"], service["failed"], f"{service['error_rate']:.2%}", service["predictions"], service["latency_ms"]["p50"],
              service["latency_ms"]["p95"], service["latency_ms"]["p99"], service["requests_per_second"],
              cost["cpu_seconds_per_1000_predictions"], cost["peak_memory_mb"]]],
        )
    )  # fmt: skip
    if service["errors_by_code"]:
        parts.append(table(["error", "requests"], [[code, n] for code, n in service["errors_by_code"].items()]))
    parts.append(f'<img alt="requests and latency over time" src="{png(latency_figure(report["latency_over_time"]))}">')
    parts.append("<h2>Input drift</h2>")
    if drift["judged"]:
        threshold = report["thresholds"]["psi_threshold"]
        rule = (
            f"A feature drifted when PSI >= {threshold:g} and the two-sample KS test rejects at p < {report['thresholds']['ks_p_value']:g}."
        )
        parts.append(f"<p>{escape(rule)}</p>")
        parts.append(f'<img alt="drift per feature" src="{png(drift_figure(drift["features"], threshold))}">')
        rows = [[r["feature"], r["train_mean"], r["live_mean"], r["psi"], r["ks_statistic"], r["ks_p_value"],
                 "ignored" if r["ignored"] else "DRIFTED" if r["drifted"] else "ok"] for r in drift["features"]]  # fmt: skip
        classes = ["muted" if r["ignored"] else "" for r in drift["features"]]
        header = ["feature", "train mean", "live mean", "PSI", "KS statistic", "KS p-value", "verdict"]
        parts.append(table(header, rows, classes, flag_cells="DRIFTED"))
    else:
        parts.append(f'<p class="muted">Not judged: {escape(drift["reason"])}.</p>')
    parts.append("<h2>Live accuracy</h2>")
    if live is None:
        parts.append('<p class="muted">No actuals given (<code>--actuals</code>): live accuracy not measured.</p>')
    else:
        parts += live_section(live, report["offline"])
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
