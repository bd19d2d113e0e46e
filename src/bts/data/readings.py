"""How readings are keyed, ordered and labelled: the series keys, the clean order, sorting by them, text labels.

Kept apart from the cleaning rules (and their pandera schemas) so that what only needs the keys and the order,
such as the features, imports neither.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pyarrow

SERIES_KEYS = ["station_id", "parameter_id"]
CLEAN_ORDER = ["station_id", "parameter_id", "reading_time", "id"]


def sorted_by(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """frame.sort_values(order, kind="stable").reset_index(drop=True), without a copy when frame is already sorted.

    Numeric and time keys are checked in one pass and, if out of order, sorted by numpy's stable lexsort (pandas
    first factorizes every key); keys with a missing value (pandas puts those last) or of another kind go to pandas.
    """
    keys = [frame[c].to_numpy() for c in order]
    if any(key.dtype.kind not in "iufM" for key in keys) or any(frame[c].hasnans for c in order):
        return frame.sort_values(order, kind="stable").reset_index(drop=True)
    if in_order(keys):
        return frame.reset_index(drop=True)
    return frame.take(np.lexsort(keys[::-1])).reset_index(drop=True)  # lexsort sorts by the last key first


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
