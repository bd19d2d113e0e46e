"""Model Registry governance: versions of verified packages, aliases instead of stages, recorded transitions.

Registration is a deliberate act (`bts register`), never a side effect of the
pipeline. A version's source is the package logged to the run that trained
it; its tags carry the package md5 and the lineage. Registration is
idempotent and completes an interrupted one: the version is looked up by its
package md5, and only a version tagged `registration.complete` is finished.
Promotion to an alias (e.g. `champion`) is gated on a metric of both
versions scored on the same data; every transition is written on the version
as a `transition.*` tag (who, when, why, previous holder).
"""

from __future__ import annotations

import getpass
import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bts.errors import BtsError, ConfigError
from bts.files import read_parquet
from bts.hashing import dvc_md5
from bts.horizons import FORECAST, KINDS, label, metric_horizons, metric_name, output_column, target_column
from bts.kill_points import kill_point
from bts.lifecycle.integrity import download_version, version_integrity
from bts.lifecycle.model_card import brief_scores, nominal_coverage, steps_ahead
from bts.lifecycle.references import check_alias, check_version
from bts.model.package import PACKAGE_ARTIFACT, load_package
from bts.tracking.tags import PACKAGE_MD5, REGISTRATION_COMPLETE, TRANSITION_PREFIX, data_md5_tag

CANDIDATE = "candidate"
MODEL_DESCRIPTION = "Forecasts the readings of a BTS sensor series a few steps ahead, each with an interval, from its latest readings."


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, check_version(version))
    except MlflowException:
        raise BtsError(f"registered model {name!r} has no version {version}") from None


def alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def find_version(client: MlflowClient, name: str, package_md5: str) -> ModelVersion | None:
    """The version registered for this package, if any (the oldest, should there be several)."""
    versions = client.search_model_versions(f"name = '{name}' and tags.`{PACKAGE_MD5}` = '{package_md5}'")
    if not versions:
        return None
    return client.get_model_version(name, min(versions, key=lambda v: int(v.version)).version)  # search results carry no aliases


def describe_run(run: Run) -> str:
    """A version's description: the model its run trained, its settings, the horizons it forecasts and its test scores
    at each of them."""
    params, metrics = run.data.params, run.data.metrics
    settings = ", ".join(
        f"{k.removeprefix('train.')}={v}" for k, v in sorted(params.items()) if k.startswith("train.") and k != "train.model"
    )
    return (
        f"{params.get('train.model')} ({settings}) forecasting BTS readings {steps_ahead(metric_horizons(metrics))} ahead from the "
        f"last {params.get('featurize.n_lags')}; {brief_scores(metrics, params)}"
    )


def record_transition(client: MlflowClient, version: ModelVersion, alias: str, previous: str | None, reason: str, forced: bool) -> None:
    at = datetime.now(UTC)
    event = {
        "alias": alias,
        "version": str(version.version),
        "previous": previous,
        "by": getpass.getuser(),
        "at": at.isoformat(timespec="seconds"),
        "reason": reason,
        "forced": forced,
    }
    client.set_model_version_tag(version.name, str(version.version), f"{TRANSITION_PREFIX}{at:%Y%m%dT%H%M%S%f}.{alias}", json.dumps(event))


def ensure_package_logged(client: MlflowClient, run: Run, package: Path, package_md5: str) -> str:
    """The run's artifact URI of the package, uploading the package there first when the run lacks it."""
    listed = {entry.path for entry in client.list_artifacts(run.info.run_id, PACKAGE_ARTIFACT)}
    if listed:
        with tempfile.TemporaryDirectory() as scratch:
            logged = Path(client.download_artifacts(run.info.run_id, PACKAGE_ARTIFACT, scratch))
            if dvc_md5(logged) != package_md5:
                raise BtsError(f"run {run.info.run_id} already holds another package under '{PACKAGE_ARTIFACT}' (md5 {dvc_md5(logged)})")
    else:
        client.log_artifacts(run.info.run_id, str(package), PACKAGE_ARTIFACT)
    return f"{run.info.artifact_uri}/{PACKAGE_ARTIFACT}"


def register(
    client: MlflowClient, name: str, package: Path, package_md5: str, lineage: dict[str, str], run: Run, description: str
) -> tuple[ModelVersion, str]:
    """Make (or finish making) the version of this verified package, with the `candidate` alias; returns it and what was done."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    version = find_version(client, name, package_md5)
    if version is not None and version.tags.get(REGISTRATION_COMPLETE) == "true":
        return version, "already registered"
    state = "completed an interrupted registration" if version is not None else "registered"
    if version is None:
        source = ensure_package_logged(client, run, package, package_md5)
        tags = {**lineage, PACKAGE_MD5: package_md5, "run_id": run.info.run_id}
        version = client.create_model_version(name, source=source, run_id=run.info.run_id, tags=tags, description=description)
    kill_point("version-created")
    previous = alias_holder(client, name, CANDIDATE)
    if previous is None or previous.version != version.version:
        client.set_registered_model_alias(name, CANDIDATE, version.version)
        kill_point("alias-set")
        record_transition(client, version, CANDIDATE, previous.version if previous else None, "new version registered", False)
    client.set_model_version_tag(name, str(version.version), REGISTRATION_COMPLETE, "true")
    return client.get_model_version(name, str(version.version)), state


@dataclass(frozen=True)
class Gate:
    metric: str
    direction: str  # "min" or "max"

    def better(self, challenger: float, holder: float) -> bool:
        return challenger < holder if self.direction == "min" else challenger > holder

    def describe(self) -> str:
        return "lower is better" if self.direction == "min" else "higher is better"


def recorded_score(client: MlflowClient, version: ModelVersion, gate: Gate) -> float:
    metrics = client.get_run(version.run_id).data.metrics
    if gate.metric not in metrics:
        split, _, score = horizon_metric(gate.metric) or (None, None, None)
        scored = [metric_name(split, h, score) for h in metric_horizons(metrics, split, score)] if split else []
        hint = f" (it has {', '.join(scored)}: registry.gate_metric in params.yaml names the one to gate on)" if scored else ""
        raise BtsError(f"version {version.version}: its run {version.run_id} has no metric {gate.metric!r} to gate on{hint}")
    return metrics[gate.metric]


def horizon_metric(metric: str) -> tuple[str, int, str] | None:
    """('test', 5, 'rmse') of a score of one horizon on one split (test.h5.rmse); None for any other metric."""
    split, _, rest = metric.partition(".")
    score = rest.partition(".")[2]
    horizons = metric_horizons([metric], split, score)
    return (split, horizons[0], score) if horizons else None


def rescored(client: MlflowClient, versions: list[ModelVersion], gate: Gate, features: Path) -> list[float]:
    """Each version's gate metric, computed anew on one evaluation set (a split of a feature table), as evaluate
    computes it: the gate metric's horizon scored on the rows of its split, the interval at the coverage each
    version's run asked for."""
    from bts.model.evaluation import horizon_score

    parts = horizon_metric(gate.metric)
    if parts is None:
        example = metric_name("test", 1, "rmse")
        raise BtsError(f"{gate.metric}: not a score of one horizon on one split (such as {example}): it cannot be scored anew")
    split, horizon, metric = parts
    frame = read_parquet(features)
    rows = frame[frame["split"] == split]
    if rows.empty:
        raise BtsError(f"{features}: no '{split}' rows to score {gate.metric} on")
    if target_column(horizon) not in rows.columns:
        raise BtsError(
            f"{features}: no {target_column(horizon)}: its examples hold no reading {horizon} steps ahead to score {gate.metric}"
        )
    outputs = [output_column(kind, horizon) for kind in KINDS]
    values = []
    for version in versions:
        with tempfile.TemporaryDirectory() as scratch:
            folder = download_version(client, version, Path(scratch))
            model = load_package(folder, version.tags.get(PACKAGE_MD5))
            columns = model.metadata.metadata["feature_columns"]
            missing = [c for c in columns if c not in rows.columns]
            if missing:
                raise BtsError(f"{features}: lacks the column(s) {missing} that version {version.version} needs")
            predicted = model.predict(rows[columns])
        if output_column(FORECAST, horizon) not in getattr(predicted, "columns", []):
            raise BtsError(f"version {version.version} does not forecast {label(horizon)}: it cannot be scored on {gate.metric}")
        coverage = nominal_coverage(client.get_run(version.run_id).data.params)
        forecast = predicted[outputs].set_axis(rows.index)  # one row per row given, in order
        scores = horizon_score(rows.join(forecast), horizon, float("nan") if coverage is None else coverage)
        if metric not in scores:
            raise BtsError(f"{gate.metric}: '{metric}' is not a score this project computes ({', '.join(scores)})")
        if scores[metric] != scores[metric]:
            why = "its run records no interval coverage" if coverage is None else "persistence is exact there"
            raise BtsError(f"version {version.version}: {gate.metric} is undefined on {features} ({why})")
        values.append(scores[metric])
    return values


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    alias: str,
    gate: Gate,
    force: bool = False,
    reason: str = "",
    evaluate_on: Path | None = None,
) -> tuple[ModelVersion, str]:
    """Move `alias` to `version` if it beats the holder on the gate metric, both scored on the same data (or if forced with a reason)."""
    check_alias(alias)
    if force and not reason.strip():
        raise ConfigError("--force needs --reason: say why the gate is overridden")
    challenger = get_version(client, name, version)
    problems = version_integrity(client, challenger)
    if problems:
        raise BtsError(f"{name} version {version}: package TAMPERED: {', '.join(problems)}; it cannot be promoted")
    holder = alias_holder(client, name, alias)
    if holder is not None and holder.version == challenger.version:
        if not any(key.startswith(TRANSITION_PREFIX) and key.endswith(f".{alias}") for key in challenger.tags):
            # a promotion killed between moving the alias and recording it: the record is completed, never lost
            record_transition(client, challenger, alias, None, f"{reason or 'promoted'} (recorded after an interruption)", force)
        return challenger, f"{name} version {version} already holds @{alias}"
    verdict = "no holder to beat"
    if holder is not None:
        same_data = challenger.tags.get(data_md5_tag("features")) == holder.tags.get(data_md5_tag("features"))
        if evaluate_on is not None:
            value, held = rescored(client, [challenger, holder], gate, evaluate_on)
            where = f"both scored on {evaluate_on}"
        elif same_data:
            value, held = recorded_score(client, challenger, gate), recorded_score(client, holder, gate)
            where = "both scored on features " + str(holder.tags.get(data_md5_tag("features")))[:12]
        elif force:
            value, held = recorded_score(client, challenger, gate), recorded_score(client, holder, gate)
            where = "scored on different data"
        else:
            raise BtsError(
                f"version {version} was scored on features {str(challenger.tags.get(data_md5_tag('features')))[:12]} and "
                f"@{alias} (version {holder.version}) on {str(holder.tags.get(data_md5_tag('features')))[:12]}: their {gate.metric} "
                "are not comparable; score both on the same data with --evaluate-on <feature table>, e.g. data/processed/features.parquet"
            )
        verdict = f"{gate.metric} {value:.6g} vs {held:.6g} of version {holder.version}, {where}"
        if not gate.better(value, held) and not force:
            raise BtsError(
                f"version {version} does not beat @{alias} (version {holder.version}) on {gate.metric} ({gate.describe()}): "
                f"{value:.6g} vs {held:.6g}, {where}; use --force --reason '...' to promote anyway"
            )
    client.set_registered_model_alias(name, alias, challenger.version)
    kill_point("alias-moved")
    record_transition(client, challenger, alias, holder.version if holder else None, reason or f"gate passed: {verdict}", force)
    promoted = client.get_model_version(name, str(challenger.version))
    return promoted, f"{name} version {version} is now @{alias} ({verdict}{', forced' if force else ''})"
