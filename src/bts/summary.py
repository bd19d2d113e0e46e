"""A short report of what the pipeline produced, read from the metadata documents, the metrics and dvc.lock."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bts.errors import BtsError
from bts.hashing import dvc_md5, lock_md5s
from bts.project import find_root, pipeline_argument
from bts.tracking.tags import DATASETS, dataset_document_path


def summarize(root: Path) -> str:
    """Rows, coverage and md5 of each dataset (checked against dvc.lock), then the model's scores and its package."""
    md5s = lock_md5s((root / "dvc.lock").read_bytes())
    lines = ["Pipeline outputs:"]
    for name in DATASETS:
        path = root / dataset_document_path(root, name)
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        in_lock = "matches dvc.lock" if md5s.get(doc["dvc"]["path"]) == doc["dvc"]["md5"] else "NOT in dvc.lock"
        lines.append(
            f"  {name:<9} {doc['rows']:>9} rows  {len(doc['stations'])} stations  {len(doc['parameters'])} parameters  "
            f"{doc['dvc']['path']}  md5 {doc['dvc']['md5'][:12]} ({in_lock})"
        )
        if "row_accounting" in doc and "rows_in" in doc["row_accounting"]:
            acc = doc["row_accounting"]
            reasons = ", ".join(f"{k} {v}" for k, v in acc["quarantined_by_reason"].items() if v)
            lines.append(f"            {acc['rows_in']} in = {acc['rows_out']} clean + {acc['rows_quarantined']} quarantined ({reasons})")
    folder = Path(dataset_document_path(root, "raw")).parent.as_posix()
    lines.append(f"Metadata: {folder}/*.json and *.md; schemas: {Path(pipeline_argument(root, 'ingest', '--schema')).parent.as_posix()}/")
    return "\n".join([*lines, *model_summary(root)])


def model_summary(root: Path) -> list[str]:
    """The model's test scores against persistence, and its package."""
    metrics_path = pipeline_argument(root, "evaluate", "--metrics")
    package = pipeline_argument(root, "serve", "--package")
    if not (root / metrics_path).exists():
        return []
    test = json.loads((root / metrics_path).read_text())["test"]
    plots = pipeline_argument(root, "evaluate", "--plots")
    scores = f"test RMSE {test['rmse']:.4f} vs persistence {test['persistence_rmse']:.4f} (skill {test['skill']:+.1%})"
    lines = [f"Model: {scores}; {metrics_path}, {plots}/", *sensor_table(root / pipeline_argument(root, "evaluate", "--by-parameter"))]
    if (root / package).is_dir():
        md5 = dvc_md5(root / package)
        lines.append(f"Package: {package} md5 {md5}; register it with `bts register`, browse runs with `mlflow ui`")
    return lines


def sensor_table(by_parameter_path: Path, split: str = "test") -> list[str]:
    """The model against persistence per sensor, with a flag wherever it loses (pooled scores hide that)."""
    if not by_parameter_path.exists():
        return []
    sensors = json.loads(by_parameter_path.read_text()).get(f"{split}_by_parameter", {})
    lines = [f"  per sensor ({split}): rmse and mae in the sensor's unit; skill = 1 - rmse / persistence rmse"]
    for pid, s in sensors.items():
        flag = "  WORSE THAN PERSISTENCE" if s["skill"] is not None and s["skill"] < 0 else ""
        skill = "n/a" if s["skill"] is None else f"{s['skill']:+.1%}"
        lines.append(
            f"    {pid:>4} {s['sensor']:<24} {s['unit'] or '':<6} rmse {s['rmse']:<8.4g} mae {s['mae']:<8.4g} "
            f"persistence rmse {s['persistence_rmse']:<8.4g} skill {skill}{flag}"
        )
    return lines


if __name__ == "__main__":
    try:
        print(summarize(find_root()))
    except BtsError as exc:
        sys.exit(f"summary: error: {exc}")
