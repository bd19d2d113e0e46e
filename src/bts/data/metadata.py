"""Dataset metadata documents (JSON) and datasheets (Markdown), deterministic by construction.

Every field is computed from the data, the params and the catalogue, never
from the clock or the repository state, so the same data gives the same
document byte for byte; its DVC md5 then leads to the commit(s) holding it.
The fields follow the tutorial's metadata model (Dataset_id, Name, Version,
URL, Provider, Description, Size, Data_type, Dataset_dependency,
Quality_of_data, Created_time, Last_modified_time) plus provenance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bts.data.catalogue import Sensor
from bts.hashing import dvc_md5, file_md5

PROVIDER = "BTS monitoring system parameter exports (simulated and/or real, see sources)"


def _time(value: Any) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def coverage(frame: pd.DataFrame, catalogue: dict[int, Sensor], times: pd.Series) -> dict:
    """Time range, stations and parameters (with catalogue names) that a frame covers."""
    parameters = frame["parameter_id"].dropna().astype("int64").value_counts().sort_index()
    return {
        "time_range": {"first": _time(times.min()), "last": _time(times.max())},
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
    """Silences in the clean series: how many exceed the threshold, and the longest."""
    gap = clean.groupby(["station_id", "parameter_id"], sort=False)["reading_time"].diff().dt.total_seconds() / 60
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


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value, sort_keys=False) + "`"
    return str(value)


def render_datasheet(document: dict) -> str:
    """A human datasheet of a metadata document: the headline fields, then every section."""
    lines = [f"# {document['name']}", "", document["description"], ""]
    lines += ["| field | value |", "| --- | --- |"]
    headline = ["dataset_id", "version", "url", "provider", "data_type", "rows", "created_time", "last_modified_time"]
    lines += [f"| {key} | {_cell(document[key])} |" for key in headline]
    lines += [f"| size | {document['size']['value']} {document['size']['unit']} ({document['size']['bytes']} bytes) |", ""]
    lines += ["## Quality", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in document["quality_of_data"].items()]
    lines += ["", "## Coverage", "", f"Time range: {document['time_range']['first']} to {document['time_range']['last']}", ""]
    lines += [f"Stations ({len(document['stations'])}): " + ", ".join(str(s) for s in document["stations"]), ""]
    lines += ["| parameter_id | sensor | unit | rows |", "| --- | --- | --- | --- |"]
    lines += [f"| {p['parameter_id']} | {p['name']} | {p['unit']} | {p['rows']} |" for p in document["parameters"]]
    lines += ["", "## Lineage", ""]
    lines += [f"- DVC: `{document['dvc']['path']}` md5 `{document['dvc']['md5']}`"]
    if document["schema"]:
        lines += [f"- Schema: `{document['schema']['path']}` md5 `{document['schema']['md5']}`"]
    lines += [f"- Produced by stage `{document['produced_by']['stage']}` with params `{json.dumps(document['produced_by']['params'])}`"]
    lines += [f"- Depends on `{d['dataset_id']}` ({d['relationship']}) md5 `{d['md5']}`" for d in document["dataset_dependency"]]
    known = set(headline) | {
        "name",
        "description",
        "size",
        "quality_of_data",
        "time_range",
        "stations",
        "parameters",
        "dvc",
        "schema",
        "produced_by",
        "dataset_dependency",
    }
    for key, value in document.items():
        if key not in known:
            lines += ["", f"## {key.replace('_', ' ').capitalize()}", "", "```json", json.dumps(value, indent=2), "```"]
    return "\n".join(lines) + "\n"
