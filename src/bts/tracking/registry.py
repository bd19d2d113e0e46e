"""Model Registry governance: versions carrying their lineage, aliases instead of stages, recorded transitions.

New versions get the `candidate` alias. Promotion to another alias (e.g.
`champion`) is gated on a metric of the version's run; every transition is
written on the version as a `transition.*` tag (who, when, why, previous
holder), so the history survives in the registry itself.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bts.errors import BtsError
from bts.tracking.runs import params_md5

CANDIDATE = "candidate"
TRANSITION_PREFIX = "transition."


def package_identity(lineage: dict[str, str]) -> str:
    """What makes two packaged models the same: weights, params and data (not the run that produced them)."""
    keys = ["model_md5", "params_md5", "data.raw_md5", "data.clean_md5", "data.features_md5"]
    return params_md5({key: lineage.get(key) for key in keys})


def find_version(client: MlflowClient, name: str, identity: str) -> ModelVersion | None:
    versions = client.search_model_versions(f"name = '{name}' and tags.`package.identity` = '{identity}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def record_transition(client: MlflowClient, name: str, version: str, alias: str, previous: str | None, reason: str, forced: bool) -> None:
    at = datetime.now(UTC)
    event = {
        "alias": alias,
        "version": str(version),
        "previous": previous,
        "by": getpass.getuser(),
        "at": at.isoformat(timespec="seconds"),
        "reason": reason,
        "forced": forced,
    }
    client.set_model_version_tag(name, str(version), f"{TRANSITION_PREFIX}{at:%Y%m%dT%H%M%S%f}.{alias}", json.dumps(event))


def alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register(client: MlflowClient, name: str, model_uri: str, lineage: dict[str, str], description: str) -> tuple[ModelVersion, bool]:
    """Register the model as a new `candidate` version, unless a version with the same identity exists (returned, False)."""
    identity = package_identity(lineage)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Forecasts the next reading of a BTS sensor series from its latest readings.")
    existing = find_version(client, name, identity)
    if existing is not None:  # search results carry no aliases: read the version itself
        return client.get_model_version(name, existing.version), False
    tags = {**lineage, "package.identity": identity}
    version = client.create_model_version(name, source=model_uri, run_id=lineage["run_id"], tags=tags, description=description)
    previous = alias_holder(client, name, CANDIDATE)
    client.set_registered_model_alias(name, CANDIDATE, version.version)
    record_transition(client, name, version.version, CANDIDATE, previous.version if previous else None, "new version registered", False)
    return client.get_model_version(name, version.version), True


@dataclass(frozen=True)
class Gate:
    metric: str
    direction: str  # "min" or "max"

    def better(self, challenger: float, holder: float) -> bool:
        return challenger < holder if self.direction == "min" else challenger > holder


def gate_value(client: MlflowClient, version: ModelVersion, gate: Gate) -> float:
    metrics = client.get_run(version.run_id).data.metrics
    if gate.metric not in metrics:
        raise BtsError(f"version {version.version}: its run {version.run_id} has no metric {gate.metric!r} to gate on")
    return metrics[gate.metric]


def promote(client: MlflowClient, name: str, version: str, alias: str, gate: Gate, force: bool = False, reason: str = "") -> str:
    """Move `alias` to `version` if it beats the current holder on the gate metric (or if forced with a reason)."""
    if force and not reason.strip():
        raise BtsError("--force needs --reason: say why the gate is overridden")
    try:
        challenger = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise BtsError(f"registered model {name!r} has no version {version}") from exc
    holder = alias_holder(client, name, alias)
    if holder is not None and holder.version == challenger.version:
        return f"{name} version {version} already holds @{alias}"
    value = gate_value(client, challenger, gate)
    verdict = f"{gate.metric} {value:.6g}"
    if holder is not None:
        held = gate_value(client, holder, gate)
        verdict += f" vs {held:.6g} of version {holder.version}"
        if not gate.better(value, held) and not force:
            raise BtsError(
                f"version {version} does not beat @{alias} (version {holder.version}) on {gate.metric} ({direction_word(gate)}): "
                f"{value:.6g} vs {held:.6g}; use --force --reason '...' to promote anyway"
            )
    client.set_registered_model_alias(name, alias, challenger.version)
    why = reason or f"gate passed: {verdict}"
    record_transition(client, name, challenger.version, alias, holder.version if holder else None, why, force)
    return f"{name} version {version} is now @{alias} ({verdict}{', forced' if force else ''})"


def direction_word(gate: Gate) -> str:
    return "lower is better" if gate.direction == "min" else "higher is better"


def history(client: MlflowClient, name: str) -> list[dict]:
    """Every recorded alias transition of the registered model, oldest first."""
    events = []
    for version in client.search_model_versions(f"name = '{name}'"):
        events += [json.loads(value) for key, value in version.tags.items() if key.startswith(TRANSITION_PREFIX)]
    return sorted(events, key=lambda e: (e["at"], int(e["version"])))
