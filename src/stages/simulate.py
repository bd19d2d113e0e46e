"""Stage simulate: deterministic synthetic raw exports, one CSV per day."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bts.data.catalogue import load_catalogue
from bts.data.simulate import FIRST_ID, IDS_PER_DAY, SHIFTS, simulate_exports
from bts.errors import ConfigError
from bts.files import atomic_folder, write_csv
from bts.params import load_params
from bts.stage import run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sensors", required=True, help="sensor catalogue YAML")
    parser.add_argument("--out", required=True, help="folder for the simulated exports")
    # Beside the pipeline: more days for serving, monitoring and retraining (the stage itself runs on simulate params).
    parser.add_argument("--start-date", help="first day (YYYY-MM-DD) instead of simulate.start_date; reading ids follow on")
    parser.add_argument("--days", type=int, help="how many days instead of simulate.days")
    parser.add_argument("--seed", type=int, help="the seed of the daily readings instead of simulate.seed (stations keep their traits)")
    parser.add_argument(
        "--shift", action="append", default=[], metavar="STATION:KIND", help=f"a station behaving otherwise ({', '.join(SHIFTS)})"
    )
    args = parser.parse_args()
    params = load_params().simulate
    start = pd.Timestamp(args.start_date or params.start_date)
    exports = simulate_exports(
        stations=params.stations,
        parameters=params.parameters,
        start_date=str(start.date()),
        days=args.days or params.days,
        seed=params.seed,
        dirt=params.dirt,
        catalogue=load_catalogue(args.sensors),
        shifts=dict(shift_argument(text, params.stations) for text in args.shift),
        first_id=FIRST_ID + IDS_PER_DAY * (start - pd.Timestamp(params.start_date)).days,
        day_seed=args.seed,
    )
    out = Path(args.out)

    def write_exports(folder: Path) -> None:
        for name, export in exports.items():
            write_csv(folder / name, export)

    atomic_folder(out, write_exports)  # the last good exports stay until the new ones are whole
    rows = sum(len(e) for e in exports.values())
    print(f"simulate: {len(exports)} export(s), {rows} rows -> {out}")


def shift_argument(text: str, stations: list[int]) -> tuple[int, str]:
    station, _, kind = text.partition(":")
    if not station.isdigit() or int(station) not in stations or kind not in SHIFTS:
        raise ConfigError(f"--shift {text}: give STATION:KIND, a station of simulate.stations and one of {', '.join(SHIFTS)}")
    return int(station), kind


if __name__ == "__main__":
    run_stage("simulate", main)
