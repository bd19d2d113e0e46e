"""Stage simulate: deterministic synthetic raw exports, one CSV per day."""

from __future__ import annotations

import argparse
from pathlib import Path

from bts.data.catalogue import load_catalogue
from bts.data.simulate import simulate_exports
from bts.files import atomic_folder, write_csv
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

    def write_exports(folder: Path) -> None:
        for name, export in exports.items():
            write_csv(folder / name, export)

    atomic_folder(out, write_exports)  # the last good exports stay until the new ones are whole
    rows = sum(len(e) for e in exports.values())
    print(f"simulate: {len(exports)} export(s), {rows} rows -> {out}")


if __name__ == "__main__":
    run_stage("simulate", main)
