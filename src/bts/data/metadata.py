"""Dataset metadata documents (JSON) and datasheets (Markdown), deterministic by construction.

Every field is computed from the data, the params and the catalogue, never
from the clock or the repository state, so the same data gives the same
document byte for byte; its DVC md5 then leads to the commit(s) holding it.
The fields follow the tutorial's metadata model (Dataset_id, Name, Version,
URL, Provider, Description, Size, Data_type, Dataset_dependency,
Quality_of_data, Created_time, Last_modified_time) plus provenance.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bts.data.catalogue import Sensor
from bts.data.readings import SERIES_KEYS, in_order
from bts.hashing import dvc_md5, file_md5

PROVIDER = "BTS monitoring system parameter exports (simulated and/or real, see sources)"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # every time in the documents and datasheets, in UTC
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?Z?")


def iso_time(value: Any) -> str | None:
    """A (UTC) time as the documents write it, YYYY-MM-DDTHH:MM:SSZ; None for a missing one."""
    return None if pd.isna(value) else pd.Timestamp(value).strftime(TIME_FORMAT)


def coverage(frame: pd.DataFrame, catalogue: dict[int, Sensor], times: pd.Series) -> dict:
    """Time range, stations and parameters (with catalogue names) that a frame covers."""
    parameters = frame["parameter_id"].dropna().astype("int64").value_counts().sort_index()
    return {
        "time_range": {"first": iso_time(times.min()), "last": iso_time(times.max())},
        "stations": sorted(int(s) for s in frame["station_id"].dropna().unique()),
        "parameters": [
            {
                "parameter_id": int(pid),
                "name": catalogue[pid].name if pid in catalogue else "unknown",
                "unit": catalogue[pid].unit if pid in catalogue else None,
                "rows": int(rows),
            }
            for pid, rows in parameters.items()
        ],
    }


def series_gaps(clean: pd.DataFrame, threshold_minutes: float) -> dict:
    """Silences in the clean series: how many exceed the threshold, and the longest.

    Each reading's gap is the time since the row before it in its series. When the rows come series by series (the
    clean order), that row is the one just above whenever the keys match, and no grouping is needed.
    """
    keys = [clean[c] for c in SERIES_KEYS]
    if all(k.dtype.kind in "iu" for k in keys) and in_order([k.to_numpy() for k in keys]):
        same = np.logical_and.reduce([k.to_numpy()[1:] == k.to_numpy()[:-1] for k in keys])
        times = clean["reading_time"].to_numpy()
        gap = pd.Series((times[1:] - times[:-1])[same]).dt.total_seconds() / 60
    else:
        gap = clean.groupby(SERIES_KEYS, sort=False)["reading_time"].diff().dt.total_seconds() / 60
    longest = gap.max()
    return {
        "threshold_minutes": threshold_minutes,
        "gaps_over_threshold": int((gap > threshold_minutes).sum()),
        "longest_gap_minutes": None if pd.isna(longest) else round(float(longest), 2),
    }


def dataset_document(
    *,
    dataset_id: str,
    name: str,
    description: str,
    path: str | Path,
    rows: int,
    coverage_fields: dict,
    quality: dict,
    dependencies: list[dict],
    stage: str,
    params: dict,
    schema_path: str | Path | None = None,
    extra: dict | None = None,
) -> dict:
    """One dataset version's metadata document."""
    path = Path(path)
    md5 = dvc_md5(path)
    size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    document = {
        "dataset_id": dataset_id,
        "name": name,
        "version": md5,
        "url": path.as_posix(),
        "provider": PROVIDER,
        "description": description,
        "size": {"value": round(size / 1e6, 3), "unit": "MB", "bytes": size, "rows": rows},
        "data_type": "tabular time series (Apache Parquet)" if path.suffix == ".parquet" else "tabular time series (CSV)",
        "dataset_dependency": dependencies,
        "quality_of_data": quality,
        "created_time": coverage_fields["time_range"]["first"],
        "last_modified_time": coverage_fields["time_range"]["last"],
        "dvc": {"path": path.as_posix(), "md5": md5},
        "rows": rows,
        **coverage_fields,
        "schema": None if schema_path is None else {"path": Path(schema_path).as_posix(), "md5": file_md5(schema_path)},
        "produced_by": {"stage": stage, "params": params},
    }
    document.update(extra or {})
    return document


HEADLINE = {
    "dataset_id": "stable name of the dataset (the same for every version)",
    "version": "DVC md5 of the data: the same md5 means the same bytes; `git log -S <md5> -- dvc.lock` finds its commits",
    "url": "where the data lives, from the repository root (tracked by DVC)",
    "provider": "where the readings come from",
    "data_type": "form and file format of the data",
    "rows": "rows in the data",
    "created_time": "time of the first reading in the data (not when the file was written)",
    "last_modified_time": "time of the last reading in the data (not when the file was written)",
}

# What each quality measure means, per producing stage (the stages in src/stages/ compute them).
QUALITY_MEANINGS: dict[str, dict[str, str]] = {
    "ingest": {
        "completeness": "share of the cells of id, value, station_id and parameter_id that hold a value "
        "(an empty or non-numeric value counts as missing)",
        "validity": "share of rows that pass every check of the raw schema: 1 - failing_rows / rows",
        "uniqueness": "distinct reading ids / rows (an id delivered twice lowers it)",
        "label_ratio": "share of rows whose value (the reading a model learns to forecast) is a number; "
        'an empty or non-numeric value is no label (the 999999 "not set" sentinel still counts as one)',
        "failing_rows": "rows that fail at least one check of the raw schema (a count, not a share)",
    },
    "clean": {
        "completeness": "share of cells that hold a value: 1 by construction (rows with an empty or non-numeric cell are quarantined)",
        "validity": "share of rows that pass the clean schema: 1 by construction (the stage fails otherwise)",
        "uniqueness": "distinct reading ids / rows: 1 by construction (repeated ids are quarantined)",
        "label_ratio": "share of rows whose value is a number: 1 by construction (the rest are quarantined)",
        "kept_ratio": "rows kept / raw rows in; the rest are quarantined, by reason under Row accounting",
        "gaps.threshold_minutes": "a silence longer than this between two consecutive readings of one series "
        "(station and parameter) counts as a gap (param clean.gap_threshold_minutes)",
        "gaps.gaps_over_threshold": "silences longer than the threshold, over every series (a count)",
        "gaps.longest_gap_minutes": "longest silence in any series, in minutes",
    },
    "featurize": {
        "completeness": "share of the feature cells (every feature column, every example) that hold a value",
        "validity": "not measured here: 1 because every example is built from clean readings, which pass the clean schema",
        "uniqueness": "not measured here: 1 because each example comes from one clean reading (unique by id)",
        "label_ratio": "examples / clean readings in: the share of readings that became an example with a target; "
        "the rest lack a full history or a reading ahead (see Row accounting)",
    },
}
UNDEFINED = "not defined for this stage in bts.data.metadata.QUALITY_MEANINGS"


def _text(value: Any) -> str:
    """A scalar as a datasheet shows it: times in the documents' one format, booleans and None in words."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str) and _TIMESTAMP.fullmatch(value):
        return iso_time(value) or value
    return str(value)


def _inline(value: Any) -> str:
    """A value in words on one line: a list as a comma list, a mapping as 'key value; key value', empty ones as none."""
    if isinstance(value, list):
        return ", ".join(_inline(item) for item in value) if value else "none"
    if isinstance(value, dict):
        return "; ".join(f"{key} {_inline(inner)}" for key, inner in value.items()) if value else "none"
    return _text(value)


def _cell(value: Any) -> str:
    """A table cell (or a value in a sentence): the value in words, the pipe escaped so the table holds."""
    return _inline(value).replace("|", "\\|").replace("\n", " ")


def _flat(values: dict, prefix: str = "") -> dict[str, Any]:
    """{'gaps': {'threshold_minutes': 30}} -> {'gaps.threshold_minutes': 30}; lists are kept whole."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]


def _title(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _fits_cell(value: Any) -> bool:
    """A scalar, an empty mapping or a flat list: what one table cell shows."""
    if isinstance(value, list):
        return not any(isinstance(item, dict | list) for item in value)
    return not isinstance(value, dict) or not value


def _block(value: Any, name: str) -> list[str]:
    """Any value of a document as Markdown: a mapping as a table (nested mappings as tables below it), a list of
    records as a table, a list as bullets, a scalar as it is."""
    if isinstance(value, dict):
        if value and all(isinstance(v, dict) and v and all(_fits_cell(x) for x in v.values()) for v in value.values()):
            columns = list(dict.fromkeys(key for record in value.values() for key in record))  # {row: {column: value}}
            return _table([name, *columns], [[key, *(record.get(c) for c in columns)] for key, record in value.items()])
        cells = {key: inner for key, inner in value.items() if _fits_cell(inner)}
        lines = _table(["item", "value"], [[key, inner] for key, inner in cells.items()]) if cells else []
        for key, inner in value.items():
            if key not in cells:
                lines += [*([""] if lines else []), f"**{_title(key)}**", "", *_block(inner, key)]
        return lines or ["none"]
    if isinstance(value, list):
        if value and all(isinstance(item, dict) and all(_fits_cell(x) for x in item.values()) for item in value):
            columns = list(dict.fromkeys(key for record in value for key in record))
            return _table(columns, [[record.get(c) for c in columns] for record in value])
        lines = []
        for item in value:
            lines += [f"- {_cell(item)}"] if _fits_cell(item) else ["-", *(f"  {line}" for line in _block(item, name))]
        return lines or ["none"]
    return [_text(value)]


def _params(params: dict) -> list[str]:
    flat = _flat(params)
    return [f"  - `{key}` = {_cell(value)}" for key, value in flat.items()] or ["  - none"]


def _failure_report(path: str, document: dict) -> list[str]:
    failing = document["quality_of_data"].get("failing_rows")
    counted = f" {failing} of the {document['rows']} rows fail at least one check." if failing is not None else ""
    return [
        f"The rows that fail the raw schema, counted per column and check with sample rows, are in `{path}` "
        f"(path from the repository root).{counted}"
    ]


def _quarantine(quarantine: dict, document: dict) -> list[str]:
    rows = document.get("row_accounting", {}).get("rows_quarantined")
    count = f"The {rows} quarantined rows" if rows is not None else "The quarantined rows"
    return [f"{count}, each with its `quarantine_reason`, are in `{quarantine['path']}` (DVC md5 `{quarantine['md5']}`)."]


def _feature_columns(columns: list, document: dict) -> list[str]:
    return [f"{len(columns)} columns, in the order the model takes them: " + ", ".join(f"`{c}`" for c in columns) + "."]


def _target_columns(targets: list, document: dict) -> list[str]:
    return [
        "The columns the model forecasts, one per horizon (the reading that many steps ahead): "
        + ", ".join(f"`{c}`" for c in targets)
        + "."
    ]


def _splits(splits: dict, document: dict) -> list[str]:
    rows = [[name, part.get("first_target"), part.get("last_target"), part.get("examples")] for name, part in splits.items()]
    rows.sort(key=lambda row: (_text(row[1]), row[0]))  # in time order: train, valid, test
    return [
        "Each station's examples are split in time order of their target (the reading forecast), the newest in test, "
        "so every station is scored; examples of featurize.holdout_stations form the holdout split:",
        "",
        *_table(["split", "first target time", "last target time", "examples"], rows),
    ]


SECTIONS = {
    "failure_report": _failure_report,
    "quarantine": _quarantine,
    "feature_columns": _feature_columns,
    "target_columns": _target_columns,
    "splits": _splits,
}


def render_datasheet(document: dict) -> str:
    """A human datasheet of a metadata document: headline fields, quality measures with what each means, coverage,
    lineage, then every other section as tables, lists or sentences (never JSON). Same document, same text."""
    stage = document["produced_by"]["stage"]
    lines = [f"# {document['name']}", "", document["description"], "", "All times are UTC, written YYYY-MM-DDTHH:MM:SSZ.", ""]
    size = document["size"]
    rows = [[key, document[key], meaning] for key, meaning in HEADLINE.items()]
    rows.append(["size", f"{size['value']} {size['unit']} ({size['bytes']} bytes)", "size of the data on disk"])
    lines += _table(["field", "value", "what it means"], rows)
    meanings = QUALITY_MEANINGS.get(stage, {})
    quality = _flat(document["quality_of_data"])
    lines += ["", "## Quality", "", "Shares run from 0 to 1 (1 = every row or cell); counts are marked as such.", ""]
    lines += _table(["measure", "value", "what it means"], [[key, value, meanings.get(key, UNDEFINED)] for key, value in quality.items()])
    time_range = document["time_range"]
    lines += ["", "## Coverage", "", f"Time range: {_text(time_range['first'])} to {_text(time_range['last'])}", ""]
    lines += [f"Stations ({len(document['stations'])}): " + ", ".join(str(s) for s in document["stations"]), ""]
    parameters = [[p["parameter_id"], p["name"], p["unit"], p["rows"]] for p in document["parameters"]]
    lines += _table(["parameter_id", "sensor", "unit", "rows"], parameters)
    lines += ["", "## Lineage", ""]
    lines += [f"- Data: `{document['dvc']['path']}`, DVC md5 `{document['dvc']['md5']}`"]
    if document["schema"]:
        lines += [f"- Schema: `{document['schema']['path']}`, md5 `{document['schema']['md5']}`"]
    lines += [f"- Produced by stage `{stage}` with params:", *_params(document["produced_by"]["params"])]
    for d in document["dataset_dependency"]:
        lines += [f"- Depends on `{d['dataset_id']}` ({d['relationship']}): `{d['path']}`, DVC md5 `{d['md5']}`"]
    known = {*HEADLINE, "name", "description", "size", "quality_of_data", "time_range", "stations", "parameters", "dvc", "schema"}
    known |= {"produced_by", "dataset_dependency"}
    for key, value in document.items():
        if key not in known:
            render = SECTIONS.get(key)
            body = render(value, document) if render else _block(value, key)
            lines += ["", f"## {_title(key)}", "", *body]
    return "\n".join(lines) + "\n"
