"""Stage clean: raw readings -> clean readings + quarantine (every dropped row with its reason)."""

from __future__ import annotations

import argparse

from bts.data.catalogue import load_catalogue
from bts.data.cleaning import check_clean, split_readings
from bts.data.metadata import coverage, dataset_document, render_datasheet, series_gaps
from bts.data.schemas import clean_schema, raw_schema, read_table
from bts.files import BackgroundWrites, write_json, write_text
from bts.hashing import dvc_md5
from bts.params import load_params
from bts.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--sensors", required=True)
    parser.add_argument("--out", required=True, help="clean readings (Parquet)")
    parser.add_argument("--quarantine", required=True, help="quarantined rows with quarantine_reason (Parquet)")
    parser.add_argument("--schema", required=True, help="clean pandera schema (YAML)")
    parser.add_argument("--document", required=True)
    parser.add_argument("--datasheet", required=True)
    args = parser.parse_args()
    params = load_params().clean
    catalogue = load_catalogue(args.sensors)
    schema = clean_schema(catalogue)
    with BackgroundWrites() as background:
        raw_md5 = background.submit(dvc_md5, args.raw)  # hashed while the rows are split
        raw = read_table(args.raw, raw_schema(catalogue))
        result = split_readings(raw, catalogue, list(schema.columns))
        background.parquet(args.out, result.clean)
        background.parquet(args.quarantine, result.quarantine)
        check_clean(result.clean, schema)  # while they are written: a failure leaves the last good outputs in place
        coverage_fields = coverage(result.clean, catalogue, result.clean["reading_time"])
        gaps = series_gaps(result.clean, params.gap_threshold_minutes)
    accounting = result.accounting
    write_text(args.schema, schema.to_yaml())
    document = dataset_document(
        dataset_id="bts-clean",
        name="BTS clean readings",
        description="Readings that pass every cleaning rule, typed, deduplicated and sorted by station, parameter and time.",
        path=args.out,
        rows=len(result.clean),
        coverage_fields=coverage_fields,
        quality={
            "completeness": 1.0,
            "validity": 1.0,
            "uniqueness": 1.0,
            "label_ratio": 1.0,
            "kept_ratio": round(accounting["rows_out"] / max(accounting["rows_in"], 1), 6),
            "gaps": gaps,
        },
        dependencies=[{"dataset_id": "bts-raw", "path": args.raw, "md5": raw_md5.result(), "relationship": "input"}],
        stage="clean",
        params={"clean": params.model_dump()},
        schema_path=args.schema,
        extra={"row_accounting": accounting, "quarantine": {"path": args.quarantine, "md5": dvc_md5(args.quarantine)}},
    )
    write_json(args.document, document)
    write_text(args.datasheet, render_datasheet(document))
    reasons = ", ".join(f"{code} {n}" for code, n in accounting["quarantined_by_reason"].items() if n)
    counts = f"{accounting['rows_in']} in = {accounting['rows_out']} clean + {accounting['rows_quarantined']} quarantined"
    print(f"clean: {counts} ({reasons or 'none'})")


if __name__ == "__main__":
    run_stage("clean", main)
