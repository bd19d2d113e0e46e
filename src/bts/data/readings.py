"""How readings are keyed, ordered, typed and labelled: the series keys, the clean order and types, sorting, text labels.

Kept apart from the cleaning rules (and their pandera schemas) so that what only needs the keys, the order and the
types, such as the features, imports neither (pandera takes a few tenths of a second to import, and imports Spark).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow

from bts.errors import InputFileError
from bts.files import read_parquet

SERIES_KEYS = ["station_id", "parameter_id"]
CLEAN_ORDER = ["station_id", "parameter_id", "reading_time", "id"]
CLEAN_NAME = "bts_clean_readings"
CLEAN_TYPES = {
    "station_id": "int64",
    "parameter_id": "int64",
    "reading_time": "datetime64[us]",
    "id": "int64",
    "value": "float64",
    "source_file": "str",
    "source_row": "int64",
}  # the clean schema's columns, in its order


def read_clean(path: str | Path, columns: list[str]) -> pd.DataFrame:
    """columns of the clean readings at path, each checked to be of its clean type (as schemas.read_table checks them,
    with pandera's words, without importing it). A missing or unreadable file or column, or one of another type, is one
    InputFileError naming it."""
    frame = read_parquet(path, columns)
    for column in columns:
        if str(frame[column].dtype) != CLEAN_TYPES[column]:
            found = f"expected series '{column}' to have type {CLEAN_TYPES[column]}, got {frame[column].dtype}"
            raise InputFileError(path, f"types do not match schema {CLEAN_NAME}: {found}")
    return frame


def sort_order(frame: pd.DataFrame, order: list[str]) -> np.ndarray | None:
    """The row positions of frame.sort_values(order, kind="stable"), or None when the rows are already in that order.

    Whether they are is checked in one vectorized pass over the keys. Integer and time keys are ordered by numpy's
    stable lexsort on their arrays, narrow keys folded into one first (pandas would factorize each key); keys with
    missing values or of other types go to pandas.
    """
    keys = [frame[c] for c in order]
    if any(k.dtype.kind not in "iumM" or k.hasnans for k in keys):
        positions = frame.reset_index(drop=True).sort_values(order, kind="stable").index.to_numpy()
        return None if bool((positions == np.arange(len(positions))).all()) else positions
    arrays = [k.to_numpy() for k in keys]
    if in_order(arrays):
        return None
    folded = folded_keys(arrays)
    return np.argsort(folded[0], kind="stable") if len(folded) == 1 else np.lexsort(folded[::-1])  # primary key last


def folded_keys(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The same order with fewer keys: each key folded into the one before it while their ranges multiply below 2**62.

    (a, b) orders as (a - min a) * (range of b) + (b - min b) does, and lexsort makes one pass a key.
    """
    folded: list[np.ndarray] = []
    span = 0  # the range of the last key in folded
    for array in arrays:
        if array.dtype.kind == "u" and array.dtype.itemsize == 8:  # beyond int64: left as it is
            folded.append(array)
            span = 2**62
            continue
        values = array.view("int64") if array.dtype.kind == "M" else array.astype("int64", copy=False)
        low, high = (int(values.min()), int(values.max())) if len(values) else (0, 0)
        width = high - low + 1
        if folded and span * width < 2**62:
            folded[-1] = folded[-1] * width + (values - low)
            span *= width
        else:
            folded.append(values - low if width < 2**62 else values)  # a range this wide is folded into nothing
            span = width
    return folded


def sorted_by(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """frame.sort_values(order, kind="stable").reset_index(drop=True), without a copy when frame is already sorted."""
    positions = sort_order(frame, order)
    return (frame if positions is None else frame.take(positions)).reset_index(drop=True)


def in_order(keys: list[np.ndarray]) -> bool:
    """Every row is at most the next one, comparing keys[0], then keys[1] on a tie, and so on."""
    if not keys or len(keys[0]) < 2:
        return True
    descending, tied = np.zeros(len(keys[0]) - 1, dtype=bool), np.ones(len(keys[0]) - 1, dtype=bool)
    for key in keys:
        descending |= tied & (key[1:] < key[:-1])
        tied &= key[1:] == key[:-1]
    return not descending.any()


def labels(codes: np.ndarray, names: list[str], index: pd.Index | None = None) -> pd.Series:
    """A text column (dtype str) holding names[code] in each row, missing where the code is -1.

    Built by Arrow from the codes (a dictionary array cast to plain text), not from millions of Python strings.
    """
    codes = np.asarray(codes)
    indices = pyarrow.array(codes.astype(np.int32), mask=codes < 0)
    text = pyarrow.DictionaryArray.from_arrays(indices, pyarrow.array(names, type=pyarrow.large_string())).cast(pyarrow.large_string())
    column = text.to_pandas()
    if index is not None:
        column.index = index
    return column


def repeated(values: pd.Series, keep: Literal["first", "last", False] = "first") -> pd.Series:
    """values.duplicated(keep=keep): True where another row holds the same value (all but the first of them, all
    but the last, or all of them for keep=False).

    Integers are compared after numpy's stable sort, which takes nearly sorted input (ids grow as readings are
    delivered) in about one pass where pandas hashes every value; other values, or missing ones, go to pandas.
    Whether any value repeats at all is told first by numpy's default sort, several times faster than the stable
    one on ids out of order (clean readings are in series order) and all there is to do when none repeats.
    """
    if values.dtype.kind not in "iu" or values.hasnans:
        return values.duplicated(keep=keep)
    array = values.to_numpy()
    ascending = np.sort(array)
    if not (ascending[1:] == ascending[:-1]).any():
        return pd.Series(np.zeros(len(array), dtype=bool), index=values.index, name=values.name)
    del ascending
    order = np.argsort(array, kind="stable")  # equal values keep their row order: the first one comes first
    same = array[order[1:]] == array[order[:-1]]  # each row in value order against the one before it
    result = np.zeros(len(array), dtype=bool)
    if keep != "last":
        result[order[1:]] = same  # a row equal to the one before it is not the first of its value
    if keep != "first":
        result[order[:-1]] |= same  # a row equal to the one after it is not the last of its value
    return pd.Series(result, index=values.index, name=values.name)


def distinct_count(values: pd.Series) -> int:
    """values.nunique(): distinct values, missing ones left out (integers counted after a sort, as in repeated)."""
    if values.dtype.kind not in "iu":
        return int(values.nunique())
    array = np.sort(values.dropna().to_numpy(), kind="stable")
    return int(len(array) > 0) + int(np.count_nonzero(array[1:] != array[:-1]))
