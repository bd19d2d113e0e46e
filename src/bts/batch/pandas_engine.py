"""The pandas engine: the whole batch in this process, step by step, with the pipeline's own functions.

Read and validate each file, clean all readings together (clean_readings:
the clean stage's rules and accounting), score every series (score_readings),
write the predictions with their lineage and the quarantined rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bts.batch.inputs import InputFile, read_input
from bts.batch.output import PART_FILE, PREDICTIONS, QUARANTINE, write_frame
from bts.batch.scoring import SCORED_READING_COLUMNS, EngineResult, Predict, merge_accounting, score_readings, with_lineage
from bts.data.catalogue import Sensor
from bts.data.cleaning import SERIES_KEYS, clean_readings
from bts.data.features import FeatureSpec
from bts.data.schemas import clean_schema, raw_schema

PROGRESS_SECONDS = 2.0


def score_with_pandas(
    files: list[InputFile],
    catalogue: dict[int, Sensor],
    spec: FeatureSpec,
    predict: Predict,
    outputs: list[str],
    lineage: dict[str, str | None],
    staging: Path,
    say: Callable[[str], None],
) -> EngineResult:
    """Score the files into staging (PREDICTIONS/part-00000.parquet and QUARANTINE); predict answers the output columns."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    schema = raw_schema(catalogue)
    frames, records = [], []
    last_said = clock
    for number, file in enumerate(files, 1):
        raw, record = read_input(file, schema)
        frames.append(raw)
        records.append(record)
        if time.perf_counter() - last_said >= PROGRESS_SECONDS or number == len(files):
            say(f"read and validated {number}/{len(files)} file(s), {sum(r['rows'] for r in records)} rows")
            last_said = time.perf_counter()
    raw = pd.concat(frames, ignore_index=True)
    del frames
    seconds["read_and_validate"], clock = time.perf_counter() - clock, time.perf_counter()

    result = clean_readings(raw, catalogue, clean_schema(catalogue))
    del raw
    accounting = result.accounting
    say(f"cleaned: {accounting['rows_in']} in = {accounting['rows_out']} clean + {accounting['rows_quarantined']} quarantined")
    seconds["clean"], clock = time.perf_counter() - clock, time.perf_counter()

    scored = score_readings(result.clean[SCORED_READING_COLUMNS], spec, predict, outputs)
    series = len(scored.drop_duplicates(SERIES_KEYS))
    say(f"scored {len(scored)} readings of {series} series")
    seconds["score"], clock = time.perf_counter() - clock, time.perf_counter()

    write_frame(with_lineage(scored, lineage), staging / PREDICTIONS / PART_FILE)
    write_frame(result.quarantine, staging / QUARANTINE)
    seconds["write"] = time.perf_counter() - clock
    return EngineResult(records, merge_accounting([accounting]), len(scored), series, seconds, {"name": "pandas", "pandas": pd.__version__})
