"""Model cards generated from the registry and the training run (never by hand).

Fields follow the tutorial's model metadata: Model_id, Name, Status, Version,
Description, Time_created, Artefact (url, format, license), Quality_of_model
(metric, unit, value), Dataset_dependency, Model_dependency, Package_dependency;
beside them, the scores of every horizon the model forecasts, overall, by sensor and
by station. brief_scores is the same quality in one line, as a version's description
and `bts lineage` give it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bts.horizons import COVERAGE_PARAM, label, metric_horizons, metric_name
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


POOLED = "pooled over sensors"
# The scores of each horizon on the test split, in the card's table and its Quality of model, with their units. Those
# pooled over sensors of different units are read beside the per-sensor table (R2 pooled over volts and degrees says
# more about the spread of the units than about the forecast, so it is left to the run).
HORIZON_SCORES = {
    "rmse": POOLED,
    "mae": POOLED,
    "persistence_rmse": POOLED,
    "skill": "ratio (1 - rmse / persistence_rmse)",
    "coverage": "share of readings inside the interval",
    "mean_width": f"interval width, {POOLED}",
    "winkler": f"interval (Winkler) score: width plus misses, {POOLED}",
    "worst_station_skill": "ratio, the station it does worst on",
}
VALID_SCORES = ["rmse"]
COST = [("training.seconds", "s"), ("training.cpu_seconds", "s"), ("training.peak_memory_mb", "MB")]
SENSOR_SCORES = ["rmse", "mae", "persistence_rmse", "skill", "coverage", "mean_width"]


def package_dependencies(package_dir: str | Path) -> dict[str, str]:
    """{package: pinned version} from the packaged model's requirements.txt."""
    dependencies = {}
    for line in (Path(package_dir) / "requirements.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.strip().split("==", 1)
            dependencies[name] = version
    return dependencies


def _percent(value: float | None, sign: str = "") -> str:
    return "n/a" if value is None else f"{value:{sign}.1%}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def steps_ahead(horizons: Sequence[int]) -> str:
    """'1, 5 and 15 steps': the horizons in words."""
    numbers = [str(horizon) for horizon in horizons] or ["no"]
    listed = numbers[0] if len(numbers) == 1 else ", ".join(numbers[:-1]) + " and " + numbers[-1]
    return f"{listed} step{'' if numbers == ['1'] else 's'}"


def nominal_coverage(params: Mapping[str, str]) -> float | None:
    """The share of readings the run's intervals were calibrated to hold (its train.interval_coverage), if it says."""
    try:
        return float(params[COVERAGE_PARAM])
    except (KeyError, ValueError):
        return None


def brief_scores(metrics: Mapping[str, float], params: Mapping[str, str] | None = None, split: str = "test") -> str:
    """A run's scores of every horizon in one line: 'test RMSE h1 0.4282, h5 1.057, h15 1.906; skill over persistence
    +63.6%, +76.3%, +50.6%; 90% interval coverage 90.4%, 90.0%, 90.5%' (n/a where one is missing)."""
    horizons = metric_horizons(metrics, split, "rmse")
    if not horizons:
        return f"no {split} scores per horizon"

    def each(score: str, show: Callable[[float | None], str]) -> str:
        return ", ".join(show(metrics.get(metric_name(split, horizon, score))) for horizon in horizons)

    rmse = ", ".join(f"{label(horizon)} {_number(metrics.get(metric_name(split, horizon, 'rmse')))}" for horizon in horizons)
    text = f"{split} RMSE {rmse}; skill over persistence {each('skill', lambda value: _percent(value, '+'))}"
    if metric_horizons(metrics, split, "coverage"):
        nominal = nominal_coverage(params or {})
        text += f"; {'' if nominal is None else f'{nominal:.0%} '}interval coverage {each('coverage', _percent)}"
    return text


def intended_use(horizons: Sequence[int], coverage: float | None) -> str:
    interval = "an interval" if coverage is None else f"an interval meant to hold {coverage:.0%} of readings"
    return (
        f"Forecast the readings {steps_ahead(horizons)} ahead of each (station, sensor) series of a BTS monitoring export, each "
        f"with {interval}, as an early signal for predictive maintenance: a reading outside its interval is worth a look."
    )


def horizon_quality(metrics: Mapping[str, float], split: str = "test") -> list[dict]:
    """Each horizon's scores (HORIZON_SCORES) on the split, shortest first; None where the run lacks one."""
    return [
        {"horizon": horizon, **{score: metrics.get(metric_name(split, horizon, score)) for score in HORIZON_SCORES}}
        for horizon in metric_horizons(metrics, split, "rmse")
    ]


def _group_ids(metrics: Mapping[str, float], group: str) -> list[str]:
    """The ids of a group's scores in the run's metrics (`test_by_parameter.<id>.h1.rmse`), in numeric order."""
    prefix = f"{group}."
    return sorted({key.removeprefix(prefix).split(".")[0] for key in metrics if key.startswith(prefix)}, key=int)


def sensor_quality(metrics: Mapping[str, float], catalogue: dict, split: str = "test") -> list[dict]:
    """Per-sensor scores of the run, each horizon's (name and unit from the catalogue), with the horizons at which the
    model loses to persistence."""
    from bts.model.evaluation import BY_PARAMETER

    group, horizons = f"{split}{BY_PARAMETER}", metric_horizons(metrics, split, "rmse")
    rows = []
    for pid in _group_ids(metrics, group):
        sensor = catalogue.get(int(pid))
        by_horizon = {
            label(horizon): {score: metrics.get(metric_name(f"{group}.{pid}", horizon, score)) for score in SENSOR_SCORES}
            for horizon in horizons
        }
        worse = [name for name, scores in by_horizon.items() if scores["skill"] is not None and scores["skill"] < 0]
        rows.append(
            {
                "parameter_id": int(pid),
                "sensor": sensor.name if sensor else "unknown",
                "unit": sensor.unit if sensor else None,
                "by_horizon": by_horizon,
                "worse_than_persistence": worse,  # the horizons at which it loses
            }
        )
    return rows


def station_quality(metrics: Mapping[str, float]) -> list[dict]:
    """Each station the run was scored on: its rows in each split, its skill in each split per horizon, and its test
    interval coverage per horizon (None where it has none)."""
    from bts.model.evaluation import BY_STATION, SCORED_SPLITS

    horizons = metric_horizons(metrics, "test", "rmse")
    stations = sorted({station for split in SCORED_SPLITS for station in _group_ids(metrics, f"{split}{BY_STATION}")}, key=int)

    def scores(split: str, station: str, score: str) -> dict[str, float | None] | None:
        found = {label(h): metrics.get(metric_name(f"{split}{BY_STATION}.{station}", h, score)) for h in horizons}
        return found if any(value is not None for value in found.values()) else None

    return [
        {
            "station_id": int(station),
            **{f"{split}_rows": metrics.get(f"{split}{BY_STATION}.{station}.rows") for split in SCORED_SPLITS},
            **{f"{split}_skill": scores(split, station, "skill") for split in SCORED_SPLITS},
            "test_coverage": scores("test", station, "coverage"),
        }
        for station in stations
    ]


def model_card(version: ModelVersion, run: Run, package_dir: str | Path, license_name: str, catalogue: dict | None = None) -> dict:
    """The card of one registered model version, from the version, its run and its package."""
    lineage = {k: v for k, v in sorted(version.tags.items()) if not k.startswith((TRANSITION_PREFIX, "registration."))}
    metrics, params = run.data.metrics, run.data.params
    horizons, coverage = metric_horizons(metrics, "test", "rmse"), nominal_coverage(params)
    quality = [
        (metric_name(split, horizon, score), HORIZON_SCORES[score])
        for split, scores in [("test", list(HORIZON_SCORES)), ("valid", VALID_SCORES)]
        for horizon in horizons
        for score in scores
    ]
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
        "intended_use": intended_use(horizons, coverage),
        "horizons": horizons,
        "interval_coverage": coverage,  # asked of the intervals; what they held is in quality_by_horizon
        "quality_by_horizon": horizon_quality(metrics),
        "quality_of_model": [{"metric": m, "unit": unit, "value": metrics[m]} for m, unit in [*quality, *COST] if m in metrics],
        "quality_by_sensor": (by_sensor := sensor_quality(metrics, catalogue or {})),
        "stations_scored": (stations := station_quality(metrics)),
        "limitations": [
            f"{row['sensor']} (parameter {row['parameter_id']}): loses to persistence on test at "
            + ", ".join(f"{name} (skill {row['by_horizon'][name]['skill']:+.1%})" for name in row["worse_than_persistence"])
            + "; use the latest reading as its forecast there"
            for row in by_sensor
            if row["worse_than_persistence"]
        ]
        + [
            f"Trained and scored on {len(stations)} station(s) only (listed under Stations scored): check its skill on a new "
            "station before trusting it there.",
            f"Its intervals are calibrated on every series pooled (split conformal on the valid split): about "
            f"{'the share asked' if coverage is None else f'{coverage:.0%}'} of readings fall inside them overall, more on "
            "some series and fewer on others (coverage by sensor and station below).",
            f"Forecasts {steps_ahead(horizons)} ahead; it does not detect faults by itself.",
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
            {"model": "persistence (a later reading = the latest reading)", "relationship": "baseline the skill is measured against"}
        ],
        "package_dependency": package_dependencies(package_dir),
        "training_run": {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "params": dict(sorted(params.items())),
        },
        "lineage": lineage,
    }


def _iso(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")


def _per_horizon(values: Mapping[str, float | None] | None, sign: str = "") -> str:
    """'+64.8% / +75.5% / +54.9%': one value per horizon, or '-' where the station has none in that split."""
    return "-" if values is None else " / ".join(_percent(value, sign) for value in values.values())


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
    horizons = [label(horizon) for horizon in card["horizons"]]
    coverage = card["interval_coverage"]
    asked = "" if coverage is None else f" ({coverage:.0%} asked)"
    lines += ["", "## Quality by horizon (test split)", ""]
    lines += [
        "Each horizon is a number of steps (readings of the series) ahead. RMSE, width and Winkler score are pooled over "
        "sensors of different units (read them beside the tables by sensor); skill = 1 - rmse / persistence rmse; "
        "coverage is the share of readings inside the interval; the Winkler score is the interval's width plus "
        "2 / (1 - coverage asked) times how far outside a reading fell.",
        "",
        f"| horizon | rmse | mae | persistence rmse | skill | interval coverage{asked} | mean width | Winkler score "
        "| worst station skill |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in card["quality_by_horizon"]:
        numbers = " | ".join(_number(row[score]) for score in ["rmse", "mae", "persistence_rmse"])
        interval = " | ".join(_number(row[score]) for score in ["mean_width", "winkler"])
        lines.append(
            f"| {label(row['horizon'])} | {numbers} | {_percent(row['skill'], '+')} | {_percent(row['coverage'])} | {interval} "
            f"| {_percent(row['worst_station_skill'], '+')} |"
        )
    lines += ["", "## Quality by sensor (test split)", "", "RMSE, MAE and interval width in the sensor's unit.", ""]
    lines += [
        "| parameter | sensor | unit | horizon | rmse | mae | persistence rmse | skill | interval coverage | mean width | |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in card["quality_by_sensor"]:
        for name, scores in row["by_horizon"].items():
            flag = "**worse than persistence**" if name in row["worse_than_persistence"] else ""
            numbers = " | ".join(_number(scores[k]) for k in ["rmse", "mae", "persistence_rmse"])
            lines.append(
                f"| {row['parameter_id']} | {row['sensor']} | {row['unit'] or ''} | {name} | {numbers} | {_percent(scores['skill'], '+')} "
                f"| {_percent(scores['coverage'])} | {_number(scores['mean_width'])} | {flag} |"
            )
    each = " / ".join(horizons)
    lines += [
        "",
        "## Stations scored",
        "",
        f"Rows scored per split, skill over persistence per split and horizon ({each}), and the test interval coverage per "
        "horizon (holdout: stations kept out of training).",
        "",
    ]
    lines += [
        "| station | "
        + " | ".join(f"{split} rows | {split} skill ({each})" for split in SCORED_SPLITS)
        + f" | test interval coverage ({each}) |"
    ]
    lines += ["| --- |" + " --- | --- |" * len(SCORED_SPLITS) + " --- |"]
    for row in card["stations_scored"]:
        cells = [
            ("-" if row[f"{split}_rows"] is None else f"{row[f'{split}_rows']:.0f}") + " | " + _per_horizon(row[f"{split}_skill"], "+")
            for split in SCORED_SPLITS
        ]
        lines.append(f"| {row['station_id']} | {' | '.join(cells)} | {_per_horizon(row['test_coverage'])} |")
    tabled = {metric_name("test", row["horizon"], score) for row in card["quality_by_horizon"] for score in HORIZON_SCORES}
    lines += ["", "## Quality of model (besides the test scores above)", "", "| metric | value | unit |", "| --- | --- | --- |"]
    lines += [f"| {q['metric']} | {q['value']:.6g} | {q['unit']} |" for q in card["quality_of_model"] if q["metric"] not in tabled]
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
