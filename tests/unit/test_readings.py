"""Keys, order and labels of readings: sorting (skipped when already sorted), repeated ids, distinct counts, labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bts.data.readings import distinct_count, in_order, labels, repeated, sorted_by

ORDER = ["station_id", "parameter_id", "reading_time", "id"]


def readings(rows: list[tuple], index: list[int] | None = None) -> pd.DataFrame:
    """Rows of (station_id, parameter_id, second of the day, id)."""
    frame = pd.DataFrame(rows, columns=ORDER, index=index)
    return frame.assign(reading_time=pd.to_datetime(frame["reading_time"], unit="s").astype("datetime64[us]"))


SORTED = [(1, 7, 0, 10), (1, 7, 0, 11), (1, 7, 5, 3), (1, 8, 1, 4), (2, 7, 0, 1)]


def test_rows_already_in_order_come_back_as_they_are_with_a_fresh_index():
    frame = readings(SORTED, index=[9, 3, 5, 1, 0])
    pd.testing.assert_frame_equal(sorted_by(frame, ORDER), frame.sort_values(ORDER, kind="stable").reset_index(drop=True))


@pytest.mark.parametrize(
    "rows",
    [
        SORTED[::-1],  # unsorted input
        [(1, 7, 5, 3), (1, 7, 0, 10)],  # a late reading within a series
        [(2, 7, 0, 1), (1, 7, 0, 2)],  # a series boundary out of order
        [(1, 7, 0, 11), (1, 7, 0, 10)],  # the same time: the id decides
    ],
)
def test_rows_out_of_order_are_sorted_as_pandas_sorts_them(rows):
    frame = readings(rows)
    pd.testing.assert_frame_equal(sorted_by(frame, ORDER), frame.sort_values(ORDER, kind="stable").reset_index(drop=True))


@pytest.mark.parametrize("text_key", [False, True])
def test_many_tied_rows_in_any_order_are_sorted_as_pandas_sorts_them(text_key):
    """numpy's lexsort (integer and time keys) and pandas (a text key) both give pandas' stable order."""
    rng = np.random.default_rng(7)
    rows = [(int(s), int(p), int(t), int(i)) for s, p, t, i in rng.integers(0, [3, 2, 4, 5], size=(300, 4))]
    frame = readings(rows, index=list(rng.permutation(300)))
    if text_key:
        frame = frame.assign(station_id=frame["station_id"].map({0: "b", 1: "a", 2: "c"}).astype("str"))
    pd.testing.assert_frame_equal(sorted_by(frame, ORDER), frame.sort_values(ORDER, kind="stable").reset_index(drop=True))


@pytest.mark.parametrize("seed", range(6))
def test_keys_of_any_range_are_sorted_as_pandas_sorts_them(seed):
    """Narrow keys are folded into one before lexsort; keys too wide for that (all of int64, uint64) stay keys."""
    rng = np.random.default_rng(seed)
    int64, n = np.iinfo(np.int64), 400
    frame = pd.DataFrame(
        {
            "narrow": rng.integers(-3, 3, n),
            "wide": rng.integers(int64.min, int64.max, n, endpoint=True) if seed % 2 else rng.integers(0, 2**40, n),
            "unsigned": rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True) if seed % 3 == 0 else rng.integers(0, 4, n),
            "time": pd.to_datetime(rng.integers(0, 10**9, n), unit="s").astype("datetime64[us]"),
            "tie": rng.integers(0, 2, n),
        }
    )
    for order in (["narrow", "wide", "time", "tie"], ["unsigned", "narrow", "tie"], ["narrow", "tie", "unsigned", "time"]):
        pd.testing.assert_frame_equal(sorted_by(frame, order), frame.sort_values(order, kind="stable").reset_index(drop=True))


def test_duplicate_keys_keep_their_order_and_missing_keys_go_last_as_in_pandas():
    frame = pd.DataFrame({"a": [2.0, np.nan, 1.0, 2.0, 1.0], "b": [0, 1, 2, 3, 4]})
    pd.testing.assert_frame_equal(sorted_by(frame, ["a"]), frame.sort_values(["a"], kind="stable").reset_index(drop=True))


def test_in_order_compares_the_next_key_only_on_a_tie():
    assert in_order([np.array([1, 1, 2]), np.array([5, 6, 0])])
    assert not in_order([np.array([1, 1, 2]), np.array([6, 5, 0])])
    assert in_order([np.array([], dtype=int)]) and in_order([np.array([3])])


@pytest.mark.parametrize(
    "values",
    [
        pd.Series([5, 3, 5, 1, 3, 3], index=[10, 11, 12, 13, 14, 15]),  # unsorted, repeated twice
        pd.Series([1, 2, 3, 4], dtype="Int64"),  # no repeat
        pd.Series([9, 2, 7, 4], index=[3, 2, 1, 0]),  # no repeat, unsorted
        pd.Series([4, 4, 4], dtype="int64"),  # all the same: only the first is new
        pd.Series([2, pd.NA, 2, pd.NA], dtype="Int64"),  # missing values: pandas' own rule
        pd.Series([1.5, 1.5, 2.0]),  # not integers
        pd.Series([], dtype="Int64"),
    ],
)
@pytest.mark.parametrize("keep", ["first", "last", False])
def test_repeated_and_distinct_count_are_pandas_duplicated_and_nunique(values, keep):
    pd.testing.assert_series_equal(repeated(values, keep=keep), values.duplicated(keep=keep))
    assert distinct_count(values) == values.nunique()


def test_labels_are_text_with_missing_values_where_the_code_is_minus_one():
    column = labels(np.array([0, -1, 2, 0]), ["a", "b", "c"], pd.Index([7, 8, 9, 10]))
    expected = pd.Series(["a", None, "c", "a"], index=[7, 8, 9, 10], dtype="str")
    pd.testing.assert_series_equal(column, expected)
    assert labels(np.zeros(3, dtype=int), ["only"]).tolist() == ["only"] * 3


def test_read_clean_gives_the_columns_asked_for_and_names_one_of_another_type_as_read_table_does(tmp_path):
    from bts.data.readings import read_clean
    from bts.errors import InputFileError

    frame = pd.DataFrame({"id": [1, 2], "value": [1.0, 2.0], "station_id": [7, 7]})
    frame.to_parquet(tmp_path / "clean.parquet")
    pd.testing.assert_frame_equal(read_clean(tmp_path / "clean.parquet", ["value", "id"]), frame[["value", "id"]])
    frame.assign(value=frame["value"].astype("float32")).to_parquet(tmp_path / "narrow.parquet")
    with pytest.raises(InputFileError) as raised:
        read_clean(tmp_path / "narrow.parquet", ["id", "value"])
    assert str(raised.value) == (
        f"{tmp_path / 'narrow.parquet'}: types do not match schema bts_clean_readings: "
        "expected series 'value' to have type float64, got float32"
    )
