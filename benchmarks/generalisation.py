"""Generalisation benchmark: how well each model kind forecasts the readings of a station it never saw.

Leave one station out, for every station at hand: the simulated stations of
params.yaml's simulate section and the real station(s) of the exports in
--real (default ../shared/data/bts beside the project, used when it holds
any). Readings go through the pipeline's own code, in process (simulate,
ingest, clean, featurize with featurize.holdout_stations = [the left-out
station], build_model); each model kind is fitted on the train split of the
other stations and scores every example of the left-out one. Also, with no
station left out, the test split (the last readings in time of every
station), as the evaluate stage scores it; and, when there are real stations,
a model fitted on them alone scoring the simulated stations on the same
sensors (one station's day of data, forecasting others: the hard case).
Every horizon of featurize.horizons is scored: skill (1 - rmse / persistence
rmse) and the share of readings inside the interval (coverage, against
train.interval_coverage; the intervals are calibrated on the valid split of
the stations fitted on), pooled over a station's sensors; a kind is as good
as its worst station.

    .venv/bin/python benchmarks/generalisation.py                            # every kind, params.yaml as it is
    .venv/bin/python benchmarks/generalisation.py --kinds ridge elasticnet   # some kinds
    .venv/bin/python benchmarks/generalisation.py --set train.target=change --set featurize.calendar=true   # as `dvc exp run -S`
    .venv/bin/python benchmarks/generalisation.py --no-real --json out.json # simulated stations only; every number as JSON

It prints a summary per kind and horizon (real stations first, then the
simulated ones' worst and mean, the worst sensor and pair, the test split,
the real-only case and the seconds the kind took), then skill and coverage on
each left-out station and sensor. It reports
figures only; the exit code is 0 whatever they are (1 on a params or input
error). Boosting runs on one OpenMP thread (see forecasters.py); the random
forest takes minutes, the others seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing the package

from bts.data.catalogue import load_catalogue  # noqa: E402
from bts.data.cleaning import clean_readings  # noqa: E402
from bts.data.features import FeatureSpec, build_features  # noqa: E402
from bts.data.ingest import read_exports  # noqa: E402
from bts.data.schemas import clean_schema  # noqa: E402
from bts.data.simulate import simulate_exports  # noqa: E402
from bts.errors import BtsError  # noqa: E402
from bts.files import write_csv  # noqa: E402
from bts.horizons import label  # noqa: E402
from bts.model.evaluation import score  # noqa: E402
from bts.model.forecasters import build_model  # noqa: E402
from bts.params import MODEL_KINDS, Params, load_params  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "bts"
TEST, HOLDOUT = "test", "holdout"
SCORES = ("skill", "coverage", "mean_width")  # what the benchmark keeps of each horizon's scores


def clean(files: list[Path], root: Path, catalogue: dict) -> pd.DataFrame:
    """Exports read and cleaned as the ingest and clean stages do (quarantined rows left out)."""
    return clean_readings(read_exports(files, root), catalogue, clean_schema(catalogue)).clean


def simulated_readings(params: Params, catalogue: dict) -> pd.DataFrame:
    sim = params.simulate
    exports = simulate_exports(sim.stations, sim.parameters, sim.start_date, sim.days, sim.seed, sim.dirt, catalogue)
    with tempfile.TemporaryDirectory() as folder:
        files = [Path(folder) / name for name in exports]
        for path, export in zip(files, exports.values(), strict=True):
            write_csv(path, export)
        return clean(files, Path(folder), catalogue)


def real_readings(folder: Path, catalogue: dict) -> pd.DataFrame | None:
    files = sorted(folder.rglob("*.csv")) if folder.is_dir() else []
    return clean(files, folder, catalogue) if files else None


def with_overrides(params: Params, overrides: list[str]) -> Params:
    """params with `section.key=value` overrides (values parsed as YAML), validated again, as `dvc exp run -S` would."""
    raw = params.model_dump(mode="json")
    for override in overrides:
        dotted, _, value = override.partition("=")
        *parents, key = dotted.strip().split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[key] = yaml.safe_load(value)
    return Params.model_validate(raw)


def feature_spec(params: Params) -> FeatureSpec:
    """featurize as params.yaml has it, no station held out (the benchmark chooses which)."""
    return FeatureSpec.from_params(params.featurize).but(holdout_stations=[])


def forecast(features: pd.DataFrame, columns: list[str], params: Params, kind: str, *splits: str) -> list[pd.DataFrame]:
    """For each split: its rows with the forecasts and intervals of `kind`, fitted on the train split and calibrated on
    the valid split, as the train stage does."""
    train, valid = (features[features["split"] == split] for split in ("train", "valid"))
    targets = FeatureSpec.from_params(params.featurize).target_columns
    model = build_model(params.train.model_copy(update={"model": kind}), params.featurize.horizons)
    model.fit(train[columns], train[targets], train["station_id"]).calibrate(valid[columns], valid[targets], valid["station_id"])
    return [rows.join(model.predict(rows[columns])) for rows in (features[features["split"] == split] for split in splits)]


def scores_by(scored: pd.DataFrame, key: str | list[str] | None, params: Params, parameters: set[int] | None = None) -> dict:
    """{group of key: {horizon: {"skill", "coverage", "mean_width"}}} (key None: all rows), on these parameters only if given."""
    if parameters is not None:
        scored = scored[scored["parameter_id"].isin(parameters)]
    horizons, coverage = params.featurize.horizons, params.train.interval_coverage

    def of(rows: pd.DataFrame) -> dict:
        scores = score(rows, horizons, coverage)
        return {h: {name: scores[label(h)][name] for name in SCORES} for h in horizons}

    if key is None:
        return of(scored)
    return {_group(group): of(rows) for group, rows in scored.groupby(key)}


def _group(group: object) -> int | tuple[int, ...]:
    return tuple(int(g) for g in group) if isinstance(group, tuple) else int(group)


def benchmark(readings: pd.DataFrame, params: Params, kinds: list[str], real_stations: set[int]) -> dict:
    """{kind: {"test": scores, "left_out": {station: scores}, "left_out_by_sensor": {parameter: scores},
    "left_out_by_pair": {(station, parameter): scores}, "real_only_test": scores, "from_real": {station: scores},
    "from_real_all_sensors": {station: scores}, "seconds": s}}, where scores is {horizon: {"skill", "coverage", "mean_width"}}.

    test: the pooled test split with no station left out; left_out: each station scored by a model fitted on the
    others, pooled over its sensors; left_out_by_sensor: those forecasts pooled per sensor parameter over the
    left-out stations. With real stations: real_only_test is the test split of the real stations scored by a model
    fitted on them alone, and from_real each simulated station scored by that model, on the sensors the real stations
    have (a station it never saw, not a sensor it never saw; from_real_all_sensors: on every sensor).
    """
    stations = sorted((int(s) for s in readings["station_id"].unique()), key=lambda s: (s not in real_stations, s))
    spec = feature_spec(params)
    columns = spec.feature_columns
    pooled = build_features(readings, spec)[0]
    left_out = {station: build_features(readings, spec.but(holdout_stations=[station]))[0] for station in stations}
    simulated = tuple(s for s in stations if s not in real_stations)
    from_real = build_features(readings, spec.but(holdout_stations=list(simulated)))[0] if real_stations and simulated else None
    real_sensors = set(readings.loc[readings["station_id"].isin(real_stations), "parameter_id"])
    results = {}
    for kind in kinds:
        started = time.perf_counter()
        with threadpool_limits(limits=1, user_api="openmp"):  # predictions too: OpenMP's 2 threads on a busy 2-core machine spin
            test = scores_by(forecast(pooled, columns, params, kind, TEST)[0], None, params)
            scored = pd.concat([forecast(left_out[station], columns, params, kind, HOLDOUT)[0] for station in stations])
            real_only, real_all, real_test = {}, {}, None
            if from_real is not None:
                simulated_rows, own_test = forecast(from_real, columns, params, kind, HOLDOUT, TEST)
                real_only = scores_by(simulated_rows, "station_id", params, real_sensors)
                real_all = scores_by(simulated_rows, "station_id", params)
                real_test = scores_by(own_test, None, params)
        by_station = scores_by(scored, "station_id", params)
        results[kind] = {
            "test": test,
            "left_out": {station: by_station[station] for station in stations},
            "left_out_by_sensor": scores_by(scored, "parameter_id", params),
            "left_out_by_pair": scores_by(scored, ["station_id", "parameter_id"], params),
            "real_only_test": real_test,
            "from_real": real_only,
            "from_real_all_sensors": real_all,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(f"  {kind}: done in {results[kind]['seconds']} s", file=sys.stderr, flush=True)
    return results


def _aligned(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in enumerate(zip(row, widths, strict=True)))
        for row in [header, *rows]
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _both(scores: dict) -> str:
    """skill / coverage, as a cell shows them."""
    return f"{scores['skill']:+.3f} / {scores['coverage']:.1%}"


def _worst(by_group: dict, horizon: int) -> str:
    """The lowest skill and the coverage range over the groups, as a cell shows them."""
    if not by_group:
        return "-"
    skills = [scores[horizon]["skill"] for scores in by_group.values()]
    coverages = [scores[horizon]["coverage"] for scores in by_group.values()]
    return f"{min(skills):+.3f} / {min(coverages):.1%}..{max(coverages):.1%}"


def summary_table(results: dict, real_stations: set[int], horizons: list[int]) -> str:
    """Per kind and horizon: each real station left out, the simulated ones left out (worst skill, mean skill, coverage
    range), the worst sensor and (station, sensor) of all, the test split, and with real stations the model fitted on
    them alone: its own test split and the simulated stations it never saw."""
    real = sorted(real_stations)
    header = ["model kind", "horizon", *(f"real {s} left out" for s in real), "sim left out: worst / coverage", "mean skill"]
    header += ["worst sensor", "worst station x sensor", "test split"]
    if real:
        header += ["real only: own test", "-> sim (same sensors)", "(all sensors)"]
    header.append("seconds")
    rows = []
    for kind, r in results.items():
        for index, h in enumerate(horizons):
            simulated = {s: scores for s, scores in r["left_out"].items() if s not in real_stations}
            row = [kind, label(h), *(_both(r["left_out"][s][h]) for s in real)]
            row += [_worst(simulated, h), f"{np.mean([v[h]['skill'] for v in simulated.values()]):+.3f}"] if simulated else ["-", "-"]
            pairs = r["left_out_by_pair"]
            (station, parameter) = min(pairs, key=lambda pair: pairs[pair][h]["skill"])
            row += [f"{min(v[h]['skill'] for v in r['left_out_by_sensor'].values()):+.3f}"]
            row += [f"{pairs[(station, parameter)][h]['skill']:+.3f} ({station}, {parameter})", _both(r["test"][h])]
            if real:
                row += [_both(r["real_only_test"][h]), _worst(r["from_real"], h), _worst(r["from_real_all_sensors"], h)]
            rows.append([*row, f"{r['seconds']:.0f}" if index == 0 else ""])
    return _aligned(header, rows)


def station_table(results: dict, real_stations: set[int], horizons: list[int]) -> str:
    """Per kind and horizon, the skill / coverage on each station left out."""
    stations = list(next(iter(results.values()))["left_out"])
    header = ["model kind", "horizon", *(f"{s} ({'real' if s in real_stations else 'sim'})" for s in stations)]
    rows = [[kind, label(h), *(_both(r["left_out"][s][h]) for s in stations)] for kind, r in results.items() for h in horizons]
    return _aligned(header, rows)


def sensor_table(results: dict, horizons: list[int]) -> str:
    """Per kind and horizon, the skill / coverage on each sensor parameter, pooled over the stations left out."""
    parameters = list(next(iter(results.values()))["left_out_by_sensor"])
    header = ["model kind", "horizon", *(f"parameter {p}" for p in parameters)]
    rows = [[kind, label(h), *(_both(r["left_out_by_sensor"][p][h]) for p in parameters)] for kind, r in results.items() for h in horizons]
    return _aligned(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", choices=MODEL_KINDS, default=list(MODEL_KINDS))
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    parser.add_argument("--real", type=Path, default=REAL, help="folder of real exports (used when it holds any)")
    parser.add_argument("--no-real", action="store_true", help="simulated stations only")
    parser.add_argument("--json", type=Path, help="write every number here")
    args = parser.parse_args()
    try:
        params = with_overrides(load_params(args.params), args.overrides)
        catalogue = load_catalogue(REPO / "metadata" / "sensors.yaml")
        started = time.perf_counter()
        parts = [simulated_readings(params, catalogue)]
        real = None if args.no_real else real_readings(args.real, catalogue)
        real_stations = set() if real is None else {int(s) for s in real["station_id"].unique()}
        if real is not None:
            parts.append(real)
        readings = pd.concat(parts, ignore_index=True)
        print(
            f"readings: {len(readings)} clean, {readings['station_id'].nunique()} stations ({len(real_stations)} real) "
            f"in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        results = benchmark(readings, params, args.kinds, real_stations)
    except BtsError as exc:
        sys.exit(f"generalisation: error: {exc}")
    settings = ", ".join(args.overrides) or "params.yaml as it is"
    horizons, coverage = params.featurize.horizons, params.train.interval_coverage
    print(
        f"Per horizon (steps ahead): skill over persistence (1 - rmse / persistence rmse) / share of readings inside the "
        f"{coverage:.0%} interval, pooled over each station's sensors; {settings}"
    )
    print(summary_table(results, real_stations, horizons))
    print("\nEach station left out (fitted on the others), skill / coverage:")
    print(station_table(results, real_stations, horizons))
    print("\nEach sensor, over the stations left out, skill / coverage:")
    print(sensor_table(results, horizons))
    if args.json:
        for result in results.values():  # JSON keys are text
            result["left_out_by_pair"] = {f"{s}/{p}": scores for (s, p), scores in result["left_out_by_pair"].items()}
        document = {"overrides": args.overrides, "real_stations": sorted(real_stations), "results": results}
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
