"""A short report of what the pipeline produced, read from the metadata documents and dvc.lock."""

from __future__ import annotations

import json
from pathlib import Path

from bts.hashing import dvc_md5, lock_md5s
from bts.tracking.tags import DATASETS


def summarize(metadata_dir: str | Path = "metadata/datasets", lock_path: str | Path = "dvc.lock") -> str:
    md5s = lock_md5s(Path(lock_path).read_text())
    lines = ["Pipeline outputs:"]
    for name in DATASETS:
        path = Path(metadata_dir) / f"{name}.json"
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
    lines.append(f"Metadata: {metadata_dir}/*.json and *.md; schemas: metadata/schemas/")
    lines += model_summary()
    return "\n".join(lines)


def model_summary(metrics_path: str | Path = "metrics/metrics.json", package: str | Path = "models/package") -> list[str]:
    """The model's test scores against persistence, and its package."""
    if not Path(metrics_path).exists():
        return []
    test = json.loads(Path(metrics_path).read_text())["test"]
    lines = [
        f"Model: test RMSE {test['rmse']:.4f} vs persistence {test['persistence_rmse']:.4f} "
        f"(skill {test['skill']:+.1%}); metrics/metrics.json, plots/"
    ]
    if Path(package).is_dir():
        lines.append(
            f"Package: {Path(package).as_posix()} md5 {dvc_md5(package)}; register it with `bts register`, browse runs with `mlflow ui`"
        )
    return lines


if __name__ == "__main__":
    print(summarize())
