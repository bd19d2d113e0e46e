"""Stage simulate: deterministic synthetic raw exports, one CSV per day."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bts.data.catalogue import load_catalogue
from bts.data.simulate import simulate_exports
from bts.files import write_csv
from bts.params import load_params
from bts.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sensors", required=True, help="sensor catalogue YAML")
    parser.add_argument("--out", required=True, help="folder for the simulated exports")
    args = parser.parse_args()
    params = load_params().simulate
    exports = simulate_exports(
        stations=params.stations,
        parameters=params.parameters,
        start_date=params.start_date,
        days=params.days,
        seed=params.seed,
        dirt=params.dirt,
        catalogue=load_catalogue(args.sensors),
    )
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    for name, export in exports.items():
        write_csv(out / name, export)
    rows = sum(len(e) for e in exports.values())
    print(f"simulate: {len(exports)} export(s), {rows} rows -> {out}")


if __name__ == "__main__":
    run_stage("simulate", main)
