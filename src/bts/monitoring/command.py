"""`bts monitor`: the report on one served model, written as JSON and HTML and logged to MLflow.

The report is logged as a run of the `<experiment>-monitoring` experiment
(the training run's experiment), tagged with the model's name, version,
package md5, training run id and data md5s, so it is found from the model
(`bts lineage` lists the reports; the version's `monitor.latest_report` tag
names the newest) and the model from it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from bts.data.catalogue import load_catalogue
from bts.errors import BtsError, ConfigError
from bts.files import output_place, shown_path, write_json, write_text
from bts.hashing import dvc_md5
from bts.horizons import COVERAGE_PARAM, LIVE_SPLIT, metric_name
from bts.lifecycle.lineage import lock_record, resolve_reference
from bts.model.profile import PROFILE_ARTIFACT
from bts.monitoring.field_readings import read_readings
from bts.monitoring.page import render
from bts.monitoring.report import build_report, flagged_horizons, parse_time, read_log
from bts.params import PARAMS_FILE, load_params
from bts.project import pipeline_argument
from bts.serving import DEFAULT_LOG_DIR
from bts.tracking.runs import experiment_id
from bts.tracking.store import store_lock
from bts.tracking.tags import (
    DATASETS,
    GIT_COMMIT,
    MONITOR_REPORT,
    MONITORED_NAME,
    MONITORED_RUN,
    MONITORED_VERSION,
    MONITORING_SUFFIX,
    PACKAGE_MD5,
    data_md5_tag,
)

REPORTS_DIR = "reports"  # under the monitoring log folder


def monitored_model(client: MlflowClient, ref: str, root: Path) -> dict:
    """Who is monitored: name, version, package md5 (what the log rows carry), training run and lineage."""
    if not ref.startswith("models:/") and not Path(ref).is_dir():
        raise ConfigError(f"{ref}: not a served model (models:/name@alias, models:/name/<version>, or a package folder)")
    resolved = resolve_reference(client, ref, root)
    version, run = resolved["version"], resolved["run"]
    if version is not None:
        package_md5 = version.tags.get(PACKAGE_MD5)
        if not package_md5:
            raise BtsError(f"{ref}: version {version.version} has no {PACKAGE_MD5} tag (not registered by `bts register`)")
        label = f"{version.name} version {version.version}"
    else:
        package_md5 = lock_record(root, Path(ref)) or dvc_md5(Path(ref))
        label = f"{ref} (package {package_md5[:12]})"
    lineage = resolved["lineage"]
    return {
        "reference": ref,
        "label": label,
        "name": version.name if version is not None else None,
        "version": str(version.version) if version is not None else None,
        "aliases": sorted(version.aliases) if version is not None else [],
        "package_md5": package_md5,
        "run_id": run.info.run_id if run is not None else None,
        "lineage": {data_md5_tag(name): lineage.get(data_md5_tag(name)) for name in DATASETS},
        "git_commit": run.data.tags.get(GIT_COMMIT) if run is not None else None,
    }


def training_profile(client: MlflowClient, run_id: str | None) -> dict | None:
    if run_id is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = client.download_artifacts(run_id, PROFILE_ARTIFACT, scratch)
        except Exception:  # a run trained before profiles existed: drift is then not judged
            return None
        return json.loads(Path(path).read_text())


def report_tags(model: dict) -> dict[str, str]:
    tags = {
        PACKAGE_MD5: model["package_md5"],
        MONITORED_NAME: model["name"],
        MONITORED_VERSION: model["version"],
        MONITORED_RUN: model["run_id"],
        **model["lineage"],
    }
    return {key: value for key, value in tags.items() if value}


def report_metrics(report: dict) -> dict[str, float]:
    """What the run logs: service, drift and, per horizon, live scores (`live.h5.skill`, named as evaluate names a split's)."""
    service, live = report["service"], report["live"]
    metrics = {
        "service.requests": service["requests"],
        "service.error_rate": service["error_rate"],
        "service.predictions": service["predictions"],
        **{f"service.latency_{q}_ms": v for q, v in service["latency_ms"].items() if v is not None},
        "drift.features_drifted": len(report["drift"]["drifted"]),
        **{f"drift.psi.{row['feature']}": row["psi"] for row in report["drift"]["features"]},
    }
    if service["cost"]["cpu_seconds_per_1000_predictions"] is not None:
        metrics["service.cpu_seconds_per_1000_predictions"] = service["cost"]["cpu_seconds_per_1000_predictions"]
    for scored in live["by_horizon"].values() if live is not None else []:
        horizon = scored["horizon"]
        metrics[metric_name(LIVE_SPLIT, horizon, "joined_share")] = scored["joined_share"]
        if scored["overall"] is not None:
            metrics.update({metric_name(LIVE_SPLIT, horizon, k): v for k, v in scored["overall"].items() if v is not None})
    return metrics


def retrain_command(model: dict, report: dict, run_id: str) -> str | None:
    """The `bts retrain` that would learn from these readings, when live skill fell below the threshold and a registered
    version (by an alias it holds) was served; None otherwise."""
    if not flagged_horizons(report["live"]) or model["version"] is None:
        return None
    ref = model["reference"]
    if "@" not in ref:
        if not model["aliases"]:
            return None
        ref = f"{ref} --to {model['aliases'][0]}"
    return f"bts retrain {ref} --with {report['window']['actuals']} --report {run_id}"


def log_report(client: MlflowClient, root: Path, experiment: str, model: dict, report: dict, folder: Path) -> str:
    """The report as a run of the monitoring experiment, written into folder with the run's id (its `bts retrain`
    names it); the version's tag then points at it. Returns the run id."""
    name = f"monitor-{model['name']}-v{model['version']}" if model["version"] else f"monitor-{model['package_md5'][:8]}"
    with store_lock(root):
        with mlflow.start_run(experiment_id=experiment_id(experiment, root), run_name=name) as run:
            report["retrain"] = retrain_command(model, report, run.info.run_id)
            write_json(folder / "report.json", report)
            write_text(folder / "report.html", render(report))
            mlflow.set_tags(report_tags(model))
            mlflow.log_metrics(report_metrics(report))
            mlflow.log_artifacts(str(folder), artifact_path="report")
        if model["version"]:
            client.set_model_version_tag(model["name"], model["version"], MONITOR_REPORT, run.info.run_id)
    return run.info.run_id


def monitor_command(client: MlflowClient, root: Path, args: argparse.Namespace) -> int:
    params = load_params(root / PARAMS_FILE)
    model = monitored_model(client, args.ref, root)
    now = datetime.now(UTC)
    since, until = parse_time(args.since, "--since", now), parse_time(args.until, "--until", now)
    log_dir = Path(args.log_dir) if args.log_dir else root / DEFAULT_LOG_DIR
    out = Path(args.out) if args.out else log_dir / REPORTS_DIR / f"{now:%Y%m%dT%H%M%SZ}-{model['package_md5'][:8]}"
    output_place(out, "--out" if args.out else "--log-dir")  # before any work
    log, skipped = read_log(
        log_dir, model["package_md5"], since, until, warn=lambda line: print(f"monitor: warning: {line}", file=sys.stderr)
    )
    run = client.get_run(model["run_id"]) if model["run_id"] else None
    catalogue = load_catalogue(root / pipeline_argument(root, "ingest", "--sensors"))
    actuals = read_readings(Path(args.actuals), root, root / pipeline_argument(root, "ingest", "--sensors")) if args.actuals else None
    # The coverage the intervals were calibrated for: the training run's (params.yaml's when the run is not in the store).
    coverage = float(run.data.params.get(COVERAGE_PARAM, params.train.interval_coverage)) if run else params.train.interval_coverage
    window = {
        "since": since.isoformat() if since is not None else None,
        "until": until.isoformat() if until is not None else None,
        "generated": now.isoformat(timespec="seconds"),
        "log": str(log_dir),
        "skipped_files": skipped,
        "actuals": args.actuals,
    }
    profile = training_profile(client, model["run_id"])
    metrics = run.data.metrics if run else {}
    report = build_report(model, log, profile, metrics, actuals, coverage, catalogue, params.monitor, window)
    experiment = (client.get_experiment(run.info.experiment_id).name if run else params.train.experiment) + MONITORING_SUFFIX
    run_id = log_report(client, root, experiment, model, report, out)
    print(summary(report, out, experiment, run_id))
    return 0


def summary(report: dict, out: Path, experiment: str, run_id: str) -> str:
    service, drift, live = report["service"], report["drift"], report["live"]
    lines = [
        f"monitor: {report['model']['label']}: {service['requests']} requests ({service['failed']} failed), "
        f"{service['predictions']} predictions, latency p50 {service['latency_ms']['p50']} ms p99 {service['latency_ms']['p99']} ms",
        "  drift: "
        + (
            f"{len(drift['drifted'])} of {sum(not r['ignored'] for r in drift['features'])} features drifted"
            + (f" ({', '.join(drift['drifted'])})" if drift["drifted"] else "")
            if drift["judged"]
            else f"not judged ({drift['reason']})"
        ),
    ]
    if live is not None:
        lines += live_lines(live, report["offline"])
    for alert in report["alerts"]:
        lines.append(f"  ALERT: {alert}")
    if report["retrain"]:
        lines.append(f"  to retrain with these readings: {report['retrain']}")
    if report["window"]["skipped_files"]:
        lines.append(f"  log: {len(report['window']['skipped_files'])} unreadable file(s) left out (named above)")
    lines.append(f"  report: {shown_path(out / 'report.html')}; MLflow run {run_id} in {experiment}")
    return "\n".join(lines)


def live_lines(live: dict, offline: dict) -> list[str]:
    """One line per horizon: rows joined, live RMSE, skill, coverage against the target and width, beside the run's test
    scores."""
    if not live["by_horizon"]:
        return [f"  live: {live['predictions']} predictions to join"]
    lines = []
    for key, scored in live["by_horizon"].items():
        overall, test = scored["overall"], offline["by_horizon"].get(key, {})
        head = f"  live {key}: {scored['joined']} of {live['predictions']} predictions joined"
        if overall is None:
            lines.append(f"{head} (none with the reading {scored['horizon']} step(s) later)")
            continue
        skill = "n/a" if overall["skill"] is None else f"{overall['skill']:+.1%}"
        offline_text = (
            f"; offline test RMSE {test['rmse']:.4g}, skill {test['skill']:+.1%}, coverage {test['coverage']:.1%}"
            if None not in (test.get("rmse"), test.get("skill"), test.get("coverage"))
            else ""
        )
        lines.append(
            f"{head}; RMSE {overall['rmse']:.4g}, skill {skill} over persistence, coverage {overall['coverage']:.1%} "
            f"(target {live['target_coverage']:.1%}), mean width {overall['mean_width']:.4g}{offline_text}"
        )
    return lines
