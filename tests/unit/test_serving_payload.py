"""The request bodies of `bts serve`: every payload format, MLflow's own parsing as the reference, and every bad request;
and its answers: a forecast package's output columns, scored as MLflow scores them and written as stock MLflow writes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bts.errors import BtsError
from bts.horizons import output_columns
from bts.serving.app import Records
from bts.serving.payload import PayloadParser, RequestError, media_type

FEATURES = ["lag_1", "lag_2", "gap_1_seconds"]
ROWS = [[14.0, 12.5, 1], [0.1, -3.25, 45], [1e-300, 2.2250738585072011e-308, 86400]]
EXPECTED = np.array(ROWS, dtype=np.float64)


@pytest.fixture
def parser() -> PayloadParser:
    return PayloadParser(FEATURES, max_rows=5)


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


def records(rows: list[list], columns: list[str] = FEATURES) -> list[dict]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


def error(parser: PayloadParser, content: bytes, content_type: str = "application/json") -> RequestError:
    with pytest.raises(RequestError) as caught:
        parser.parse(content, content_type)
    return caught.value


PAYLOADS = {
    "dataframe_split": {"dataframe_split": {"columns": FEATURES, "data": ROWS}},
    "dataframe_split with index": {"dataframe_split": {"index": [7, 8, 9], "columns": FEATURES, "data": ROWS}},
    "dataframe_split, columns reordered": {
        "dataframe_split": {"columns": ["gap_1_seconds", "lag_1", "lag_2"], "data": [[r[2], r[0], r[1]] for r in ROWS]}
    },
    "dataframe_records": {"dataframe_records": records(ROWS)},
    "instances": {"instances": records(ROWS)},
    "inputs as records": {"inputs": records(ROWS)},
    "inputs as columns": {"inputs": {c: [r[i] for r in ROWS] for i, c in enumerate(FEATURES)}},
    "with params": {"dataframe_split": {"columns": FEATURES, "data": ROWS}, "params": {}},
}


@pytest.mark.parametrize("name", PAYLOADS)
def test_every_json_format_gives_the_same_matrix(parser: PayloadParser, name: str) -> None:
    batch = parser.parse(body(PAYLOADS[name]), "application/json; charset=utf-8")
    assert batch.features.dtype == np.float64
    assert np.array_equal(batch.features, EXPECTED)
    assert batch.keys == {}


def test_inputs_with_single_values_is_one_row(parser: PayloadParser) -> None:
    batch = parser.parse(body({"inputs": dict(zip(FEATURES, ROWS[0], strict=True))}), "application/json")
    assert np.array_equal(batch.features, EXPECTED[:1])


def test_csv_numbers_are_read_exactly(parser: PayloadParser) -> None:
    values = np.random.default_rng(3).normal(20, 5, (5, 3))
    frame = pd.DataFrame(values, columns=FEATURES)
    batch = parser.parse(frame.to_csv(index=False).encode(), "text/csv")
    assert np.array_equal(batch.features, values)  # bit for bit: Python's correctly rounded float parsing
    assert batch.format == "csv"


def test_json_numbers_are_read_exactly(parser: PayloadParser) -> None:
    values = np.random.default_rng(4).normal(200, 50, (5, 3))
    batch = parser.parse(
        body({"dataframe_split": pd.DataFrame(values, columns=FEATURES).to_dict(orient="split", index=False)}), "application/json"
    )
    assert np.array_equal(batch.features, values)


@pytest.mark.parametrize("name", ["dataframe_split", "dataframe_records", "instances", "inputs as columns", "inputs as records"])
def test_same_frame_as_mlflow_parses(parser: PayloadParser, name: str) -> None:
    """MLflow's own parsing and signature enforcement give the frame the parser's matrix holds (order, dtype, values)."""
    from mlflow.models import infer_signature
    from mlflow.models.utils import _enforce_schema
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    schema = infer_signature(pd.DataFrame(EXPECTED, columns=FEATURES)).inputs
    mlflow_frame = _enforce_schema(infer_and_parse_data(PAYLOADS[name], schema), schema)
    ours = parser.parse(body(PAYLOADS[name]), "application/json").features
    assert list(mlflow_frame.columns) == FEATURES
    assert np.array_equal(mlflow_frame.to_numpy(), ours)


def test_mlflow_csv_parsing_agrees(parser: PayloadParser) -> None:
    import io

    from mlflow.models import infer_signature
    from mlflow.pyfunc.scoring_server import parse_csv_input

    text = pd.DataFrame(EXPECTED, columns=FEATURES).to_csv(index=False)
    schema = infer_signature(pd.DataFrame(EXPECTED, columns=FEATURES)).inputs
    assert np.array_equal(parse_csv_input(io.StringIO(text), schema)[FEATURES].to_numpy(), parser.parse(text.encode(), "text/csv").features)


def test_key_columns_are_kept_apart_from_the_features(parser: PayloadParser) -> None:
    rows = [
        [*row, 1161114004, 122, time] for row, time in zip(ROWS, ["2017-04-18 10:00:00", "2017-04-18T12:00:00+07:00", None], strict=True)
    ]
    columns = [*FEATURES, "station_id", "parameter_id", "reading_time"]
    batch = parser.parse(body({"dataframe_split": {"columns": columns, "data": rows}}), "application/json")
    assert np.array_equal(batch.features, EXPECTED)
    assert batch.keys["station_id"] == [1161114004] * 3
    assert batch.keys["parameter_id"] == [122] * 3
    assert batch.keys["reading_time"] == [datetime(2017, 4, 18, 10, tzinfo=UTC), datetime(2017, 4, 18, 5, tzinfo=UTC), None]


def test_key_columns_in_csv_and_records(parser: PayloadParser) -> None:
    csv_body = b"station_id,lag_1,lag_2,gap_1_seconds,reading_time\n42,1,2,3,2017-04-18 10:00:00Z\n,4,5,6,\n"
    batch = parser.parse(csv_body, "text/csv")
    assert batch.keys == {"station_id": [42, None], "reading_time": [datetime(2017, 4, 18, 10, tzinfo=UTC), None]}
    assert np.array_equal(batch.features, [[1, 2, 3], [4, 5, 6]])
    some = records(ROWS[:2])
    some[0]["parameter_id"] = 111  # a key given for some rows only: null for the others
    assert parser.parse(body({"dataframe_records": some}), "application/json").keys == {"parameter_id": [111, None]}


BAD = {
    "no content type": (b"{}", None, 415, "UNSUPPORTED_CONTENT_TYPE", "Content-Type"),
    "unsupported content type": (b"lag_1=1", "text/plain", 415, "UNSUPPORTED_CONTENT_TYPE", "this Content-Type is not supported"),
    "latin-1 charset": (b"{}", "application/json; charset=latin-1", 415, "UNSUPPORTED_CONTENT_TYPE", "UTF-8"),
    "unknown content type parameter": (
        b"{}",
        "application/json; format=pandas-split",
        415,
        "UNSUPPORTED_CONTENT_TYPE",
        "a Content-Type parameter other than charset",
    ),
    "empty body": (b"", "application/json", 400, "EMPTY_BODY", "empty"),
    "blank body": (b"  \n", "application/json", 400, "EMPTY_BODY", "empty"),
    "malformed JSON": (b'{"dataframe_split": {"columns": [', "application/json", 400, "MALFORMED_JSON", "malformed JSON"),
    "not UTF-8": (b'{"inputs": "\xff"}', "application/json", 400, "MALFORMED_JSON", "UTF-8"),
    "a list": (b"[1, 2]", "application/json", 400, "INVALID_PAYLOAD", "JSON object"),
    "unknown payload key": (body({"rows": records(ROWS)}), "application/json", 400, "UNKNOWN_PAYLOAD_KEY", "1 unknown payload key(s)"),
    "no format key": (body({}), "application/json", 400, "INVALID_PAYLOAD", "exactly one"),
    "two format keys": (
        body({"instances": records(ROWS), "inputs": records(ROWS)}),
        "application/json",
        400,
        "INVALID_PAYLOAD",
        "exactly one",
    ),
    "params not an object": (body({"inputs": records(ROWS), "params": 3}), "application/json", 400, "INVALID_PAYLOAD", "params"),
    "split without columns": (body({"dataframe_split": {"data": ROWS}}), "application/json", 400, "INVALID_PAYLOAD", "columns"),
    "split with an unknown field": (
        body({"dataframe_split": {"columns": FEATURES, "data": ROWS, "dtype": "x"}}),
        "application/json",
        400,
        "INVALID_PAYLOAD",
        "dataframe_split: 1 unknown field(s) (allowed: columns, data, index)",
    ),
    "split as a list": (body({"dataframe_split": ROWS}), "application/json", 400, "INVALID_PAYLOAD", "dataframe_split"),
    "duplicate columns": (
        body({"dataframe_split": {"columns": ["lag_1", "lag_1", "lag_2", "gap_1_seconds"], "data": [[1, 1, 2, 3]]}}),
        "application/json",
        400,
        "INVALID_PAYLOAD",
        "duplicate column(s) 'lag_1'",
    ),
    "missing column": (
        body({"dataframe_split": {"columns": ["lag_1", "gap_1_seconds"], "data": [[1, 2]]}}),
        "application/json",
        400,
        "MISSING_COLUMNS",
        "'lag_2'",
    ),
    "extra column": (
        body({"dataframe_records": [{"lag_1": 1, "lag_2": 2, "gap_1_seconds": 3, "humidity": 4}]}),
        "application/json",
        400,
        "EXTRA_COLUMNS",
        "1 unknown column(s) at position(s) 4:",
    ),
    "wrong type": (
        body({"dataframe_split": {"columns": FEATURES, "data": [[1, "not a number", 3]]}}),
        "application/json",
        400,
        "WRONG_TYPE",
        "'lag_2': expected a number, got a string in row 0",
    ),
    "a boolean": (body({"inputs": {"lag_1": True, "lag_2": 1, "gap_1_seconds": 2}}), "application/json", 400, "WRONG_TYPE", "boolean"),
    "a nested list in a cell": (
        body({"dataframe_split": {"columns": FEATURES, "data": [[[1], 2, 3]]}}),
        "application/json",
        400,
        "WRONG_TYPE",
        "'lag_1'",
    ),
    "null": (
        body({"dataframe_split": {"columns": FEATURES, "data": [[1, 2, 3], [1, None, 3]]}}),
        "application/json",
        400,
        "NULL_VALUE",
        "'lag_2': null in row 1",
    ),
    "NaN literal": (
        b'{"dataframe_split": {"columns": ["lag_1", "lag_2", "gap_1_seconds"], "data": [[1, 2, NaN]]}}',
        "application/json",
        400,
        "NON_FINITE_VALUE",
        "'gap_1_seconds': NaN in row 0",
    ),
    "Infinity literal": (
        b'{"inputs": {"lag_1": [1, -Infinity], "lag_2": [1, 2], "gap_1_seconds": [1, 2]}}',
        "application/json",
        400,
        "NON_FINITE_VALUE",
        "'lag_1': infinity in row 1",
    ),
    "a number beyond float": (
        b'{"inputs": {"lag_1": 1e999, "lag_2": 1, "gap_1_seconds": 2}}',
        "application/json",
        400,
        "NON_FINITE_VALUE",
        "'lag_1'",
    ),
    "an integer beyond float": (
        body({"inputs": {"lag_1": 10**400, "lag_2": 1, "gap_1_seconds": 2}}),
        "application/json",
        400,
        "WRONG_TYPE",
        "'lag_1': number out of range",
    ),
    "ragged rows": (
        body({"dataframe_split": {"columns": FEATURES, "data": [[1, 2, 3], [1.0, 2.0]]}}),
        "application/json",
        400,
        "RAGGED_ROWS",
        "row 1 has 2 values for 3 columns",
    ),
    "a row that is no list": (
        body({"dataframe_split": {"columns": FEATURES, "data": [[1, 2, 3], 4]}}),
        "application/json",
        400,
        "RAGGED_ROWS",
        "row 1",
    ),
    "a record lacking a column": (
        body({"dataframe_records": [*records(ROWS[:1]), {"lag_1": 1, "lag_2": 2}]}),
        "application/json",
        400,
        "RAGGED_ROWS",
        "row 1 lacks column 'gap_1_seconds'",
    ),
    "instances as lists": (body({"instances": ROWS}), "application/json", 400, "INVALID_PAYLOAD", "not an object"),
    "columns of different lengths": (
        body({"inputs": {"lag_1": [1, 2], "lag_2": [1], "gap_1_seconds": [1, 2]}}),
        "application/json",
        400,
        "RAGGED_ROWS",
        "different lengths",
    ),
    "no rows": (body({"dataframe_split": {"columns": FEATURES, "data": []}}), "application/json", 400, "NO_ROWS", "no rows"),
    "too many rows": (
        body({"dataframe_split": {"columns": FEATURES, "data": ROWS * 2}}),
        "application/json",
        413,
        "TOO_MANY_ROWS",
        "at most 5",
    ),
    "a bad station id": (
        body({"dataframe_records": [{**records(ROWS)[0], "station_id": "42"}]}),
        "application/json",
        400,
        "WRONG_TYPE",
        "'station_id'",
    ),
    "a negative parameter id": (
        body({"dataframe_records": [{**records(ROWS)[0], "parameter_id": -1}]}),
        "application/json",
        400,
        "WRONG_TYPE",
        "'parameter_id'",
    ),
    "a bad reading time": (
        body({"dataframe_records": [{**records(ROWS)[0], "reading_time": "yesterday"}]}),
        "application/json",
        400,
        "WRONG_TYPE",
        "'reading_time': row 0 is not an ISO 8601 time",
    ),
    "CSV header only": (b"lag_1,lag_2,gap_1_seconds\n", "text/csv", 400, "NO_ROWS", "no rows"),
    "CSV ragged": (b"lag_1,lag_2,gap_1_seconds\n1,2,3\n1,2\n", "text/csv", 400, "RAGGED_ROWS", "CSV line 3"),
    "CSV empty value": (b"lag_1,lag_2,gap_1_seconds\n1,,3\n", "text/csv", 400, "NULL_VALUE", "'lag_2': empty value in row 0"),
    "CSV text": (b"lag_1,lag_2,gap_1_seconds\n1,2,abc\n", "text/csv", 400, "WRONG_TYPE", "'gap_1_seconds': expected a number"),
    "CSV underscore number": (b"lag_1,lag_2,gap_1_seconds\n1_000,2,3\n", "text/csv", 400, "WRONG_TYPE", "'lag_1'"),
    "CSV nan": (b"lag_1,lag_2,gap_1_seconds\n1,nan,3\n", "text/csv", 400, "NON_FINITE_VALUE", "'lag_2': NaN in row 0"),
    "CSV inf": (b"lag_1,lag_2,gap_1_seconds\n1,2,-inf\n", "text/csv", 400, "NON_FINITE_VALUE", "'gap_1_seconds': infinity"),
    "CSV with an index column": (b",lag_1,lag_2,gap_1_seconds\n0,1,2,3\n", "text/csv", 400, "EXTRA_COLUMNS", "at position(s) 1:"),
    "CSV missing column": (b"lag_1,gap_1_seconds\n1,3\n", "text/csv", 400, "MISSING_COLUMNS", "'lag_2'"),
    "CSV not UTF-8": (b"lag_1,lag_2,gap_1_seconds\n\xff,2,3\n", "text/csv", 400, "MALFORMED_CSV", "UTF-8"),
    "CSV NUL": (b"lag_1,lag_2,gap_1_seconds\n1,2,3\x00\n", "text/csv", 400, "WRONG_TYPE", "'gap_1_seconds'"),
    "CSV too many rows": (b"lag_1,lag_2,gap_1_seconds\n" + b"1,2,3\n" * 6, "text/csv", 413, "TOO_MANY_ROWS", "at most 5"),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_requests_get_a_short_error_naming_the_problem(parser: PayloadParser, name: str) -> None:
    content, content_type, status, code, fragment = BAD[name]
    problem = error(parser, content, content_type)
    assert (problem.status, problem.code) == (status, code), problem.message
    assert fragment in problem.message
    assert len(problem.message) < 300


def test_json_nested_a_thousand_levels_is_a_client_error(parser: PayloadParser) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    assert error(parser, deep).code == "INVALID_PAYLOAD"
    inside = b'{"dataframe_split": {"columns": ["lag_1", "lag_2", "gap_1_seconds"], "data": ' + deep + b"}}"
    assert error(parser, inside).code == "RAGGED_ROWS"  # the row is a list of one list, not 3 values
    assert error(parser, b"[" * 100_000 + b"]" * 100_000).code == "JSON_TOO_DEEP"
    assert error(parser, b"[NaN, " + b"[" * 5000 + b"]" * 5000 + b"]").code == "JSON_TOO_DEEP"  # the NaN-aware fallback too


def test_messages_never_echo_long_input(parser: PayloadParser) -> None:
    long_name = "x" * 10_000
    problem = error(parser, body({"dataframe_records": [{**records(ROWS)[0], long_name: 1}]}))
    assert problem.code == "EXTRA_COLUMNS" and long_name not in problem.message and len(problem.message) < 300
    many = [f"column_{i}" for i in range(1000)]
    problem = error(parser, body({"inputs": dict.fromkeys([*FEATURES, *many], 1)}))
    assert "1000 unknown column(s) at position(s) 4, 5, 6, 7, 8, 9, 10, 11 and 992 more" in problem.message
    assert len(problem.message) < 400
    problem = error(parser, f"lag_1,lag_2,gap_1_seconds\n1,2,{'9' * 5000}x\n".encode(), "text/csv")
    assert problem.code == "WRONG_TYPE" and len(problem.message) < 300


# What a client sent that the server did not expect: none of it comes back in the reply (issue: a CSV formula, markup).
HOSTILE = "=cmd|' /C calc'!A0<svg/onload=alert(1)>"


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (body({"dataframe_records": [{**records(ROWS)[0], HOSTILE: 1}]}), "application/json"),
        (body({"dataframe_split": {"columns": [*FEATURES, HOSTILE], "data": [[1, 2, 3, 4]]}}), "application/json"),
        (body({"dataframe_split": {"columns": ["lag_1", HOSTILE], "data": [[1, 2]]}}), "application/json"),
        (body({"dataframe_split": {"columns": [*FEATURES, HOSTILE, HOSTILE], "data": [[1, 2, 3, 4, 5]]}}), "application/json"),
        (body({"dataframe_split": {"columns": FEATURES, "data": ROWS, HOSTILE: 1}}), "application/json"),
        (body({HOSTILE: records(ROWS)}), "application/json"),
        (body({"dataframe_records": [{**records(ROWS)[0], "reading_time": HOSTILE}]}), "application/json"),
        (f"lag_1,lag_2,gap_1_seconds\n1,2,{HOSTILE}\n".encode(), "text/csv"),
        (f"lag_1,lag_2,gap_1_seconds,{HOSTILE}\n1,2,3,4\n".encode(), "text/csv"),
        (b"{}", f"{HOSTILE}/json"),
        (b"{}", f"application/json; {HOSTILE}=1"),
    ],
    ids=[
        "record key",
        "split column",
        "missing and unknown",
        "duplicate unknown",
        "split field",
        "payload key",
        "time",
        "csv value",
        "csv header",
        "content type",
        "content type parameter",
    ],
)
def test_a_reply_never_echoes_what_the_client_sent(parser: PayloadParser, content: bytes, content_type: str) -> None:
    problem = error(parser, content, content_type)
    assert problem.status in (400, 413, 415)
    for fragment in ("cmd", "calc", "svg", "alert", "="):
        assert fragment not in problem.message, problem.message


def test_media_type() -> None:
    assert media_type("Application/JSON; charset=UTF-8") == "application/json"
    assert media_type('text/csv; charset="utf-8"') == "text/csv"


OUTPUTS = output_columns([1, 5, 15])
EDGES = [1e-05, 1e16, -0.0, 12.0, 5e-324, 1.7976931348623157e308, -2.2250738585072014e-308, 0.1 + 0.2, -123456.789]


def stock_answer(frame: pd.DataFrame) -> bytes:
    """What stock `mlflow models serve` writes for a model's predictions."""
    import io

    from mlflow.pyfunc.scoring_server import predictions_to_json

    written = io.StringIO()
    predictions_to_json(frame, written)
    return written.getvalue().encode()


@pytest.mark.parametrize("rows", [0, 1, 2, 1000])
def test_the_answer_is_stock_mlflows_record_per_row(rows: int) -> None:
    values = np.random.default_rng(rows).normal(20, 80, size=(rows, len(OUTPUTS))) * 10.0 ** np.random.default_rng(1).integers(-9, 9)
    if rows:
        values[0] = EDGES
    frame = pd.DataFrame(values, columns=OUTPUTS)
    ours = json.loads(Records(tuple(OUTPUTS)).body(values))
    assert ours == json.loads(stock_answer(frame))
    assert len(ours["predictions"]) == rows
    assert all(list(record) == OUTPUTS for record in ours["predictions"])  # each record's keys in the model's order
    assert all(type(value) is float for record in ours["predictions"] for value in record.values())
    if rows:
        assert list(ours["predictions"][0].values()) == EDGES  # every float back exactly, the smallest and largest too


def test_the_answer_of_a_matrix_that_is_not_contiguous_is_in_row_order() -> None:
    values = np.arange(4 * len(OUTPUTS), dtype=np.float64).reshape(len(OUTPUTS), 4).T  # a transposed view
    frame = pd.DataFrame(values, columns=OUTPUTS)
    assert json.loads(Records(tuple(OUTPUTS)).body(values)) == json.loads(stock_answer(frame))


@pytest.fixture(scope="module")
def forecast_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, pd.DataFrame]:
    """A multi-horizon forecaster saved by MLflow as the pipeline packages it (signature from its predictions), loaded back
    as a pyfunc; and rows to score."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import Ridge

    from bts.model.forecasters import MultiHorizonForecaster, PersistenceResidualRegressor

    columns = ["lag_1", "lag_2", "lag_3", "step_scale"]
    frame = pd.DataFrame(np.random.default_rng(0).normal(20, 3, size=(400, len(columns))), columns=columns).assign(step_scale=1.5)
    targets = np.column_stack([frame["lag_1"] * 0.9 + 2, frame["lag_1"] * 0.7 + 6, frame["lag_2"] * 0.5 + 10])
    model = MultiHorizonForecaster(PersistenceResidualRegressor(Ridge(), "step_scale"), (1, 5, 15)).fit(frame, targets)
    model.calibrate(frame, targets)
    path, example = tmp_path_factory.mktemp("forecast") / "package", frame.head(3)
    signature = infer_signature(example, model.predict(example))
    mlflow.sklearn.save_model(
        model, str(path), serialization_format="pickle", signature=signature, input_example=example, pip_requirements=[]
    )
    return mlflow.pyfunc.load_model(str(path)), frame


def test_a_forecast_package_is_scored_lean_with_every_output_column_as_mlflow_gives_it(forecast_package) -> None:
    from bts.serving.model import scorer

    pyfunc, frame = forecast_package
    columns, outputs, predict, fast = scorer("pkg", pyfunc)
    assert columns == list(frame.columns) and outputs == OUTPUTS and fast  # the startup check found both paths the same
    predicted = predict(frame.to_numpy(dtype=np.float64))
    through_mlflow = pyfunc.predict(frame)
    assert list(through_mlflow.columns) == OUTPUTS
    assert predicted.dtype == np.float64 and predicted.shape == (len(frame), len(OUTPUTS))
    assert np.array_equal(predicted, through_mlflow.to_numpy())
    assert (predicted[:, 1::3] < predicted[:, 0::3]).all() and (predicted[:, 0::3] < predicted[:, 2::3]).all()  # bounds apart
    assert json.loads(Records(tuple(outputs)).body(predicted[:7])) == json.loads(stock_answer(through_mlflow.head(7)))


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (None, "pkg: the model's signature names no output columns; `bts serve` serves forecasts (forecast, lower, upper per horizon"),
        ("unnamed", "pkg: the model's signature names no output columns; `bts serve` serves forecasts (forecast, lower, upper per horizon"),
        (
            ["prediction"],
            "pkg: the model's output columns (prediction) are not a forecast's; `bts serve` serves forecasts (forecast, lower, upper",
        ),
        (["forecast_h1", "upper_h1", "lower_h1"], "pkg: the model's output columns (forecast_h1, upper_h1, lower_h1) are not a forecast's"),
    ],
)
def test_a_model_whose_signature_names_no_forecast_columns_is_refused_with_one_line(outputs: object, message: str, tmp_path: Path) -> None:
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    from bts.serving.model import scorer

    frame = pd.DataFrame(EXPECTED, columns=FEATURES)
    model = LinearRegression().fit(frame, EXPECTED[:, 0])
    if outputs is None:
        signature = infer_signature(frame)
    elif outputs == "unnamed":
        signature = infer_signature(frame, model.predict(frame))
    else:
        signature = infer_signature(frame, pd.DataFrame({name: model.predict(frame) for name in outputs}))
    mlflow.sklearn.save_model(model, str(tmp_path / "package"), serialization_format="pickle", signature=signature, pip_requirements=[])
    with pytest.raises(BtsError) as refused:
        scorer("pkg", mlflow.pyfunc.load_model(str(tmp_path / "package")))
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
