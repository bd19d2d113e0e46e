"""A short report of what the pipeline produced, read from the metadata documents, the metrics and dvc.lock."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bts.errors import BtsError
from bts.hashing import dvc_md5, lock_md5s
from bts.horizons import label, metric_horizons
from bts.params import flatten
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
    """The model's test scores at each horizon against persistence, with its intervals, per sensor, and its package."""
    metrics_path = pipeline_argument(root, "evaluate", "--metrics")
    package = pipeline_argument(root, "serve", "--package")
    if not (root / metrics_path).exists():
        return []
    test = json.loads((root / metrics_path).read_text())["test"]
    horizons = metric_horizons(flatten({"test": test}))
    plots = pipeline_argument(root, "evaluate", "--plots")
    shown = ", ".join(map(label, horizons))
    lines = [f"Model: test scores at {shown} (steps ahead); {metrics_path}, {plots}/", *horizon_table(test, horizons, root)]
    lines += sensor_table(root / pipeline_argument(root, "evaluate", "--by-parameter"), horizons)
    if (root / package).is_dir():
        md5 = dvc_md5(root / package)
        lines.append(f"Package: {package} md5 {md5}; register it with `bts register`, browse runs with `mlflow ui`")
    return lines


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _percent(value: float | None, sign: str = "") -> str:
    return "n/a" if value is None else f"{value:{sign}.1%}"


def horizon_table(test: dict, horizons: list[int], root: Path) -> list[str]:
    """Each horizon's RMSE against persistence's, skill, and the share of readings inside the intervals and their width."""
    from bts.params import PARAMS_FILE, load_params

    asked = f" ({load_params(root / PARAMS_FILE).train.interval_coverage:.0%} asked)"
    header = ("horizon", "rmse", "persistence rmse", "skill", f"interval coverage{asked}", "mean width")
    rows = [
        (
            label(h),
            _number(test[label(h)]["rmse"]),
            _number(test[label(h)]["persistence_rmse"]),
            _percent(test[label(h)]["skill"], "+"),
            _percent(test[label(h)]["coverage"]),
            _number(test[label(h)]["mean_width"]),
        )
        for h in horizons
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def sensor_table(by_parameter_path: Path, horizons: list[int], split: str = "test") -> list[str]:
    """The model against persistence per sensor at each horizon, with a flag wherever it loses (pooled scores hide that)."""
    if not by_parameter_path.exists():
        return []
    sensors = json.loads(by_parameter_path.read_text()).get(f"{split}_by_parameter", {})
    names = ", ".join(map(label, horizons))
    lines = [f"  per sensor ({split}): skill = 1 - rmse / persistence rmse at {names}; rmse at each, in the sensor's unit"]
    for pid, s in sensors.items():
        skills = [s.get(label(h), {}).get("skill") for h in horizons]
        losing = [label(h) for h, skill in zip(horizons, skills, strict=True) if skill is not None and skill < 0]
        flag = f"  WORSE THAN PERSISTENCE at {', '.join(losing)}" if losing else ""
        rmse = " / ".join(_number(s.get(label(h), {}).get("rmse")) for h in horizons)
        lines.append(
            f"    {pid:>4} {s['sensor']:<24} {s['unit'] or '':<6} skill {'  '.join(_percent(skill, '+').rjust(6) for skill in skills)}"
            f"   rmse {rmse}{flag}"
        )
    return lines


if __name__ == "__main__":
    try:
        print(summarize(find_root()))
    except BtsError as exc:
        sys.exit(f"summary: error: {exc}")
