"""Stage featurize: clean readings -> lag, gap and recent-window features (calendar ones optional) with target and split."""

from __future__ import annotations

import argparse

from bts.data.catalogue import load_catalogue
from bts.data.features import INPUT_COLUMNS, FeatureSpec, FeatureTable
from bts.data.metadata import coverage, dataset_document, iso_time, render_datasheet
from bts.data.readings import read_clean
from bts.files import ROW_GROUP_ROWS, BackgroundWrites, write_json, write_text
from bts.hashing import dvc_md5
from bts.params import load_params
from bts.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clean", required=True)
    parser.add_argument("--sensors", required=True)
    parser.add_argument("--out", required=True, help="feature table (Parquet)")
    parser.add_argument("--document", required=True)
    parser.add_argument("--datasheet", required=True)
    args = parser.parse_args()
    params = load_params().featurize
    spec = FeatureSpec.from_params(params)
    catalogue = load_catalogue(args.sensors)
    with BackgroundWrites() as background:
        input_md5 = background.submit(dvc_md5, args.clean)  # hashed while the features are built
        features = FeatureTable(read_clean(args.clean, INPUT_COLUMNS), spec)
        write = background.parquet_parts(args.out)
        filled = 0  # feature cells that hold a value
        for start in range(0, len(features), ROW_GROUP_ROWS):  # one row group is encoded while the next is built
            part = features.rows(start, start + ROW_GROUP_ROWS)
            write(part)
            filled += int(part[spec.feature_columns].notna().to_numpy().sum())
        accounting = features.accounting
        targets = features.targets.groupby("split", sort=True)["target_time"].agg(["min", "max", "size"])
        splits = {
            split: {"first_target": iso_time(first), "last_target": iso_time(last), "examples": int(examples)}
            for split, first, last, examples in targets.itertuples(name=None)
        }
        coverage_fields = coverage(features.keys, catalogue=catalogue, times=features.keys["reading_time"])
        completeness = round(filled / (len(features) * len(spec.feature_columns)), 6)
    document = dataset_document(
        dataset_id="bts-features",
        name="BTS features",
        description=f"Per-series examples: the last {spec.n_lags} readings, the gaps between them, the series' step scale, offset "
        f"and range position over its last {spec.scale_window} readings{' and calendar features' if spec.calendar else ''}; "
        f"targets = the readings {', '.join(map(str, spec.horizons))} step(s) ahead; split in time order of the farthest target "
        "within each station; "
        f"held-out stations ({', '.join(map(str, spec.holdout_stations)) or 'none'}) in split holdout.",
        path=args.out,
        rows=len(features),
        coverage_fields=coverage_fields,
        quality={
            "completeness": completeness,
            "validity": 1.0,
            "uniqueness": 1.0,
            "label_ratio": round(accounting["examples_out"] / max(accounting["readings_in"], 1), 6),
        },
        dependencies=[{"dataset_id": "bts-clean", "path": args.clean, "md5": input_md5.result(), "relationship": "input"}],
        stage="featurize",
        params={"featurize": params.model_dump()},
        extra={
            "feature_columns": spec.feature_columns,
            "target_columns": spec.target_columns,
            "splits": splits,
            "row_accounting": accounting,
        },
    )
    write_json(args.document, document)
    write_text(args.datasheet, render_datasheet(document))
    print(f"featurize: {len(features)} examples " + ", ".join(f"{s} {n}" for s, n in accounting["examples_by_split"].items() if n))


if __name__ == "__main__":
    run_stage("featurize", main)
