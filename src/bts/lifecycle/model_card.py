"""Model cards generated from the registry and the training run (never by hand).

Fields follow the tutorial's model metadata: Model_id, Name, Status, Version,
Description, Time_created, Artefact (url, format, license), Quality_of_model
(metric, unit, value), Dataset_dependency, Model_dependency, Package_dependency.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bts.tracking.tags import DATASETS, TRANSITION_PREFIX, data_md5_tag

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from bts.lifecycle.sql_client import SqlClient

# bts.files and bts.model.evaluation import pandas: imported where a card is made, not by `bts runs check`'s stale_cards.

CARDS_DIR = "models/cards"  # under the project root: one card per version, `<model name>-<version>.json` and `.md`


def cards_folder(root: Path, tracking_uri: str) -> Path:
    """Where the cards of a store's versions go: CARDS_DIR for the project's own store, a folder of its own inside it for
    any other (a team's server, another database), named after its host, port and path, so that version 1 of one store
    never overwrites version 1 of another."""
    import re
    from urllib.parse import urlsplit

    from bts.tracking.store import STORE_DB, shown_store

    if shown_store(tracking_uri, root) == STORE_DB:
        return root / CARDS_DIR
    parts = urlsplit(tracking_uri)
    place = f"{parts.hostname or parts.scheme}-{parts.port or ''}-{parts.path}" if parts.netloc else parts.path
    return root / CARDS_DIR / (re.sub(r"[^A-Za-z0-9.]+", "-", place).strip("-") or "store")


# Pooled over sensors of different units, so read beside the per-sensor table (R2 pooled over volts and degrees
# says more about the spread of the units than about the forecast, so it is left to the run).
QUALITY = [
    ("test.rmse", "pooled over sensors"),
    ("test.mae", "pooled over sensors"),
    ("test.persistence_rmse", "pooled over sensors"),
    ("test.skill", "ratio (1 - rmse / persistence_rmse)"),
    ("valid.rmse", "pooled over sensors"),
    ("training.seconds", "s"),
    ("training.cpu_seconds", "s"),
    ("training.peak_memory_mb", "MB"),
]


def package_dependencies(package_dir: str | Path) -> dict[str, str]:
    """{package: pinned version} from the packaged model's requirements.txt."""
    dependencies = {}
    for line in (Path(package_dir) / "requirements.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.strip().split("==", 1)
            dependencies[name] = version
    return dependencies


INTENDED_USE = (
    "Forecast the next reading of each (station, sensor) series of a BTS monitoring export, as an early signal for "
    "predictive maintenance: a reading far from its forecast is worth a look."
)
SENSOR_SCORES = ["rmse", "mae", "persistence_rmse", "skill"]


def sensor_quality(metrics: dict[str, float], catalogue: dict, split: str = "test") -> list[dict]:
    """Per-sensor scores of the run (name and unit from the catalogue), flagged where the model loses to persistence."""
    prefix = f"{split}_by_parameter."
    pids = sorted({key.removeprefix(prefix).split(".")[0] for key in metrics if key.startswith(prefix)}, key=int)
    rows = []
    for pid in pids:
        sensor = catalogue.get(int(pid))
        scores = {name: metrics.get(f"{prefix}{pid}.{name}") for name in SENSOR_SCORES}
        rows.append(
            {
                "parameter_id": int(pid),
                "sensor": sensor.name if sensor else "unknown",
                "unit": sensor.unit if sensor else None,
                **scores,
                "worse_than_persistence": scores["skill"] is not None and scores["skill"] < 0,
            }
        )
    return rows


def station_quality(metrics: dict[str, float]) -> list[dict]:
    """Each station the run was scored on: its rows and skill in each split (None where it has none)."""
    from bts.model.evaluation import BY_STATION, SCORED_SPLITS

    found: dict[str, dict] = {}
    for key, value in metrics.items():
        split, _, rest = key.partition(f"{BY_STATION}.")
        station, _, name = rest.partition(".")
        if split in SCORED_SPLITS and name in ("rows", "skill"):
            found.setdefault(station, {})[f"{split}_{name}"] = value
    return [
        {
            "station_id": int(station),
            **{f"{split}_{name}": found[station].get(f"{split}_{name}") for split in SCORED_SPLITS for name in ("rows", "skill")},
        }
        for station in sorted(found, key=int)
    ]


def model_card(version: ModelVersion, run: Run, package_dir: str | Path, license_name: str, catalogue: dict | None = None) -> dict:
    """The card of one registered model version, from the version, its run and its package."""
    lineage = {k: v for k, v in sorted(version.tags.items()) if not k.startswith((TRANSITION_PREFIX, "registration."))}
    metrics = run.data.metrics
    return {
        "model_id": f"{version.name}/{version.version}",
        "name": version.name,
        "status": card_status(version.aliases),
        "version": str(version.version),
        "description": version.description,
        "time_created": _iso(version.creation_timestamp),  # the version's: when it was registered
        "training_run_started": _iso(run.info.start_time),
        "artefact": {
            "url": f"models:/{version.name}/{version.version}",
            "package_md5": lineage.get("package.md5"),
            "format": "MLflow Model (python_function and sklearn flavors)",
            "license": license_name,
        },
        "intended_use": INTENDED_USE,
        "quality_of_model": [{"metric": m, "unit": unit, "value": metrics[m]} for m, unit in QUALITY if m in metrics],
        "quality_by_sensor": (by_sensor := sensor_quality(metrics, catalogue or {})),
        "stations_scored": (stations := station_quality(metrics)),
        "limitations": [
            f"{row['sensor']} (parameter {row['parameter_id']}): loses to persistence on test (skill {row['skill']:+.1%}); "
            "use the latest reading as its forecast"
            for row in by_sensor
            if row["worse_than_persistence"]
        ]
        + [
            f"Trained and scored on {len(stations)} station(s) only (listed under Stations scored): check its skill on a new "
            "station before trusting it there.",
            "Forecasts one reading ahead; it does not detect faults by itself.",
        ],
        "dataset_dependency": [
            {
                "dataset_id": f"bts-{name}",
                "md5": lineage.get(data_md5_tag(name)),
                "relationship": "training" if name == "features" else "upstream",
            }
            for name in reversed(DATASETS)
        ],
        "model_dependency": [
            {"model": "persistence (next reading = latest reading)", "relationship": "baseline the skill is measured against"}
        ],
        "package_dependency": package_dependencies(package_dir),
        "training_run": {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "params": dict(sorted(run.data.params.items())),
        },
        "lineage": lineage,
    }


def _iso(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")


def render_model_card(card: dict) -> str:
    from bts.model.evaluation import SCORED_SPLITS

    lines = [f"# Model card: {card['model_id']}", "", card["description"] or "", ""]
    lines += ["| field | value |", "| --- | --- |"]
    for key in ["model_id", "name", "version", "time_created", "training_run_started"]:
        lines.append(f"| {key} | {card[key]} |")
    lines.append(f"| status | {', '.join(card['status'])} |")
    artefact = card["artefact"]
    lines.append(
        f"| artefact | `{artefact['url']}` ({artefact['format']}, license {artefact['license']}), package md5 `{artefact['package_md5']}` |"
    )
    lines += ["", "## Intended use", "", card["intended_use"], "", "## Limitations", ""]
    lines += [f"- {item}" for item in card["limitations"]]
    lines += ["", "## Quality by sensor (test split)", ""]
    lines += [
        "| parameter | sensor | unit | rmse | mae | persistence rmse | skill | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in card["quality_by_sensor"]:
        flag = "**worse than persistence**" if row["worse_than_persistence"] else ""
        values = " | ".join("n/a" if row[k] is None else f"{row[k]:.4g}" for k in ["rmse", "mae", "persistence_rmse"])
        skill = "n/a" if row["skill"] is None else f"{row['skill']:+.1%}"
        lines.append(f"| {row['parameter_id']} | {row['sensor']} | {row['unit'] or ''} | {values} | {skill} | {flag} |")
    lines += [
        "",
        "## Stations scored",
        "",
        "Rows scored and skill over persistence, per split (holdout: stations kept out of training).",
        "",
    ]
    lines += ["| station | valid rows | valid skill | test rows | test skill | holdout rows | holdout skill |"]
    lines += ["| --- | --- | --- | --- | --- | --- | --- |"]
    for row in card["stations_scored"]:
        cells = [
            ("-" if row[f"{split}_rows"] is None else f"{row[f'{split}_rows']:.0f}")
            + " | "
            + ("-" if row[f"{split}_skill"] is None else f"{row[f'{split}_skill']:+.1%}")
            for split in SCORED_SPLITS
        ]
        lines.append(f"| {row['station_id']} | {' | '.join(cells)} |")
    lines += ["", "## Quality of model (pooled)", "", "| metric | value | unit |", "| --- | --- | --- |"]
    lines += [f"| {q['metric']} | {q['value']:.6g} | {q['unit']} |" for q in card["quality_of_model"]]
    lines += ["", "## Dataset dependency", ""]
    lines += [f"- `{d['dataset_id']}` ({d['relationship']}): md5 `{d['md5']}`" for d in card["dataset_dependency"]]
    lines += ["", "## Model dependency", ""]
    lines += [f"- {d['model']}: {d['relationship']}" for d in card["model_dependency"]]
    lines += ["", "## Package dependency", "", "| package | version |", "| --- | --- |"]
    lines += [f"| {name} | {version} |" for name, version in card["package_dependency"].items()]
    lines += ["", "## Training run", "", f"Run `{card['training_run']['run_id']}`, params:", "", "```json"]
    lines += [
        json.dumps(card["training_run"]["params"], indent=2),
        "```",
        "",
        "## Lineage",
        "",
        "```json",
        json.dumps(card["lineage"], indent=2),
        "```",
    ]
    return "\n".join(lines) + "\n"


CARD_ARTIFACT = "model_card"


def card_status(aliases: list[str]) -> list[str]:
    """A card's status: the version's aliases, or `registered` when it holds none."""
    return sorted(aliases) or ["registered"]


def card_path(cards_dir: Path, name: str, version: str | int) -> Path:
    return cards_dir / f"{name}-{version}.json"


def stale_cards(client: MlflowClient | SqlClient, name: str, cards_dir: Path) -> list[tuple[str, list[str], list[str]]]:
    """(version, status its card in cards_dir gives, status the registry gives) for every card that disagrees with the
    registry (a promotion killed half-way). A version without a card here is not stale: it was never published here.

    Aliases come from the registered model: the versions a search returns do not carry them.
    """
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return []
    held: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        held.setdefault(str(version), []).append(alias)
    stale = []
    for version in versions:
        try:
            written = json.loads(card_path(cards_dir, name, version.version).read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            continue
        if written != card_status(held.get(str(version.version), [])):
            stale.append((str(version.version), written, card_status(held.get(str(version.version), []))))
    return sorted(stale, key=lambda item: int(item[0]))


def publish_card(
    client: MlflowClient, version: ModelVersion, package_dir: Path, license_name: str, cards_dir: Path, catalogue: dict
) -> Path:
    """Write the version's card (JSON and Markdown) into cards_dir and log both to its run; returns the Markdown path.

    Called whenever the registry changes for the version (registration, alias moves), so the card never goes stale.
    """
    from bts.files import write_json, write_text

    version = client.get_model_version(version.name, str(version.version))  # current aliases
    card = model_card(version, client.get_run(version.run_id), package_dir, license_name, catalogue)
    stem = card_path(cards_dir, version.name, version.version).with_suffix("")
    write_json(stem.with_suffix(".json"), card)
    write_text(stem.with_suffix(".md"), render_model_card(card))
    for path in (stem.with_suffix(".json"), stem.with_suffix(".md")):
        client.log_artifact(version.run_id, str(path), CARD_ARTIFACT)
    return stem.with_suffix(".md")
