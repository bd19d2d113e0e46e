"""Stage ingest: raw exports -> typed Parquet copy, raw schema, failure report, raw metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from bts.data.catalogue import load_catalogue
from bts.data.ingest import SIMULATED, failure_report, read_exports, resolve_sources
from bts.data.metadata import coverage, dataset_document, render_datasheet
from bts.data.readings import distinct_count
from bts.data.schemas import parse_reading_time, raw_schema
from bts.files import BackgroundWrites, write_json, write_text
from bts.hashing import dvc_md5
from bts.params import load_params
from bts.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulated", required=True, help="folder of simulated exports")
    parser.add_argument("--inputs", required=True, nargs="+", help="folders that may hold real exports")
    parser.add_argument("--sensors", required=True)
    parser.add_argument("--out", required=True, help="typed Parquet copy")
    parser.add_argument("--schema", required=True, help="raw pandera schema (YAML)")
    parser.add_argument("--failures", required=True, help="failure-case report (JSON)")
    parser.add_argument("--document", required=True, help="metadata document (JSON)")
    parser.add_argument("--datasheet", required=True, help="datasheet (Markdown)")
    args = parser.parse_args()
    sources = load_params().data.sources
    catalogue = load_catalogue(args.sensors)
    files = resolve_sources(sources, Path(args.simulated), [Path(d) for d in args.inputs], root=Path.cwd())
    source_paths = {source: args.simulated if source == SIMULATED else source for source in sources}
    print(f"ingest: reading {len(files)} file(s)")
    schema = raw_schema(catalogue)
    with BackgroundWrites() as background:
        source_md5 = {source: background.submit(dvc_md5, path) for source, path in source_paths.items()}  # while reading
        raw = read_exports(files, root=Path.cwd())  # every file is checked before anything is written
        background.parquet(args.out, raw)
        report = failure_report(raw, schema)
        coverage_fields = coverage(raw, catalogue, parse_reading_time(raw["reading_time"]))
        quality = {
            "completeness": round(float(raw[["id", "value", "station_id", "parameter_id"]].notna().to_numpy().mean()), 6),
            "validity": round(1 - report["failing_rows"] / len(raw), 6),
            "uniqueness": round(float(distinct_count(raw["id"]) / len(raw)), 6),
            "label_ratio": round(float(raw["value"].notna().mean()), 6),
            "failing_rows": report["failing_rows"],
        }
    write_text(args.schema, schema.to_yaml())
    write_json(args.failures, report)
    document = dataset_document(
        dataset_id="bts-raw",
        name="BTS raw readings",
        description="Every reading of the listed exports, typed but otherwise as delivered (dirt included).",
        path=args.out,
        rows=len(raw),
        coverage_fields=coverage_fields,
        quality=quality,
        dependencies=[
            {"dataset_id": f"source:{source}", "path": path, "md5": source_md5[source].result(), "relationship": "input"}
            for source, path in source_paths.items()
        ],
        stage="ingest",
        params={"data.sources": sources},
        schema_path=args.schema,
        extra={"failure_report": args.failures},
    )
    write_json(args.document, document)
    write_text(args.datasheet, render_datasheet(document))
    print(f"ingest: {len(raw)} rows, {report['failing_rows']} fail the raw schema (see {args.failures})")


if __name__ == "__main__":
    run_stage("ingest", main)
