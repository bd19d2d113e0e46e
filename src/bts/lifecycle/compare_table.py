"""The text `bts compare` prints: its summary in sentences, then the ranking as a table that fits a given width.

Rank, run and the ranking itself (metrics, score, front) are always shown; then, while they fit, the data version,
the dirty flag and the params that differ (those most runs set first, under the shortest ending of their key that
names one param); a line names the columns left out. tabulate aligns the columns.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from bts.lifecycle.compare import (
    PARAM_PREFIX,
    SHORT_RUN_ID,
    Comparison,
    Run,
    cell_text,
    dirty_flag,
    plural,
    ranked_on,
    short_md5,
    unique_name,
)

GAP = 2  # spaces between two columns
SHORTEST_NAME = 10  # characters of a run's name kept when even the columns always shown are too wide
LISTED_VERSIONS = 3  # other data versions named in the line that counts the runs left out on them
DIRTY_CELLS = {True: "yes", False: "no", None: "-"}
WORKSPACE = " (the workspace's)"  # after the md5 of the data version dvc.lock records


@dataclass(frozen=True)
class Column:
    header: str
    cells: list[str]  # one per run shown
    numeric: bool = False  # right-aligned
    kept: bool = False  # shown whatever the width

    @property
    def width(self) -> int:
        return max(len(text) for text in [self.header, *self.cells])


def table_width(columns: Sequence[Column]) -> int:
    return sum(column.width for column in columns) + GAP * max(len(columns) - 1, 0)


def fit_columns(columns: Sequence[Column], width: int | None) -> tuple[list[Column], list[Column]]:
    """The columns to show within width, in their order, and those left out: every kept column, then each other one,
    left to right, that still fits (one too wide is left out and the next tried). Every column when width is None."""
    if width is None:
        return list(columns), []
    used = table_width([column for column in columns if column.kept])
    shown, left_out = [], []
    for column in columns:
        if column.kept:
            shown.append(column)
        elif used + GAP + column.width <= width:
            used += GAP + column.width
            shown.append(column)
        else:
            left_out.append(column)
    return shown, left_out


def short_param_names(keys: Sequence[str]) -> dict[str, str]:
    """Each key's shortest ending of whole dotted parts that is no other key's ending: in a column header,
    train.hist_gradient_boosting.max_iter is max_iter, and train.alpha beside train.ridge.alpha stays train.alpha."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for count in range(1, len(parts) + 1):
            ending = ".".join(parts[-count:])
            if not any(other != key and (other == ending or other.endswith("." + ending)) for other in keys):
                break
        names[key] = ending
    return names


def param_order(keys: Sequence[str], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The param keys by how many of the runs set them (most first: they tell the most rows apart), then by key."""
    return sorted(keys, key=lambda key: (-sum(run.get(PARAM_PREFIX + key) is not None for run in runs), key))


def format_table(result: dict[str, Any], top: int, width: int, wide: bool = False) -> str:
    """The summary (each line wrapped to width), then the top rows of each data version's ranking as one table, the
    versions apart by a rule; the table's columns fit width unless wide."""
    groups, comparison = result["groups"], result["comparison"]
    shown_groups: list[list[Run]] = [group["ranked"][:top] for group in groups]
    shown = [run for rows in shown_groups for run in rows]
    lines = [headline(result), f"ranked on {ranked_on(comparison)}"]
    if result["filter"]:
        lines.append(f"filter: {result['filter']}")
    lines += data_lines(result)
    left_out = result["runs_left_out"]
    if left_out:
        lines.append(f"{plural(left_out, 'run', 'runs')} without all metrics {'was' if left_out == 1 else 'were'} left out")
    params = result["params"]
    differ = f"params that differ between them: {', '.join(params)}" if params else "no param differs between them"
    without = result.get("runs_without_params", 0)
    lines.append(differ + (f" ({plural(without, 'run', 'runs')} logged no params)" if without else ""))
    unset = [key for key in params if all(run.get(PARAM_PREFIX + key) is None for run in shown)]  # e.g. another model's params
    if unset:
        lines.append(f"not set in any run shown, so not in the table: {', '.join(unset)}")
    front, front_shown = sum(run["pareto"] for run in result["ranked"]), sum(run["pareto"] for run in shown)
    if len(groups) == 1:
        lines.append(f"Pareto front: {plural(front, 'run', 'runs')}, marked *; {front_shown} of them in the top {len(shown)}")
    else:
        each = f"{plural(front, 'run', 'runs')} in all, marked *; {front_shown} of them in the top {top} of each"
        lines.append(f"Pareto front of each data version: {each}")
    columns = table_columns(shown, [key for key in params if key not in unset], comparison)
    table, left_out_columns = fit_table(columns, width if not wide else None)
    if left_out_columns:
        lines.append(f"not shown for width: {', '.join(column.header for column in left_out_columns)} (--wide shows every column)")
    wrapped = [text for line in lines for text in textwrap.wrap(line, width, subsequent_indent="  ", break_on_hyphens=False)]
    return "\n".join([*wrapped, "", render(table, [len(rows) for rows in shown_groups])])


def headline(result: dict[str, Any]) -> str:
    """The experiment, how many runs are ranked, and on which data."""
    ranked, groups = plural(len(result["ranked"]), "run", "runs"), result["groups"]
    start = f"experiment '{result['experiment']}': {ranked}"
    if not result["all_data"]:
        return f"{start} on the workspace's data, {version_name(result['workspace_features_md5'])} (dvc.lock)"
    if len(groups) == 1:
        return f"{start} on one data version, {version_name(groups[0]['features_md5'])}{WORKSPACE if groups[0]['workspace'] else ''}"
    return f"{start} on {len(groups)} data versions, each version ranked on its own"


def version_name(md5: str | None) -> str:
    return f"features md5 {short_md5(md5)}" if md5 else "no features md5 recorded (older runs)"


def data_lines(result: dict[str, Any]) -> list[str]:
    """Why every data version is shown without --all-data, the versions, or the runs left out for training on other data."""
    lines = [f"data: {result['data_note']}: every data version is shown"] if result["data_note"] else []
    groups, other = result["groups"], result["runs_on_other_data"]
    if len(groups) > 1:
        versions = [
            f"{short_md5(group['features_md5'])}{WORKSPACE if group['workspace'] else ''}: {plural(len(group['ranked']), 'run', 'runs')}"
            for group in groups
        ]
        lines.append(f"data versions (features md5): {'; '.join(versions)}")
    if other:
        counts = [f"{count} on {short_md5(md5)}" if md5 else f"{count} with no md5 recorded" for md5, count in other]
        if len(counts) > LISTED_VERSIONS:
            counts = [*counts[:LISTED_VERSIONS], f"{len(other) - LISTED_VERSIONS} more versions"]
        total = plural(sum(count for _, count in other), "run", "runs")
        lines.append(f"{total} on other data left out ({', '.join(counts)}): --all-data shows them")
    return lines


def metric_headers(metrics: Sequence[str]) -> dict[str, str]:
    """The metrics' column headers: without the split when every metric is of the same one (test.h1.skill, test.h5.skill:
    h1.skill, h5.skill, the split named in the line above the table), else whole. Three horizons' names whole would
    leave no room for the data version and the dirty flag."""
    splits = {metric.partition(".")[0] for metric in metrics}
    if len(splits) == 1 and all(metric.count(".") >= 2 for metric in metrics):
        return {metric: metric.partition(".")[2] for metric in metrics}
    return {metric: metric for metric in metrics}


def table_columns(runs: Sequence[Run], params: Sequence[str], comparison: Comparison) -> list[Column]:
    """Every column the table may show, in their order: rank, run, data version, dirty flag, metrics, score, front,
    then the params (param_order)."""
    names, headers = short_param_names(params), metric_headers(list(comparison.directions))
    return [
        Column("rank", [str(run["rank"]) for run in runs], numeric=True, kept=True),
        Column("run", [unique_name(run) for run in runs], kept=True),
        Column("features md5", [short_md5(run.get("features_md5")) if run.get("features_md5") else "-" for run in runs]),
        Column("dirty", [DIRTY_CELLS[dirty_flag(run.get("dirty"))] for run in runs]),
        *(Column(headers[name], [f"{run[name]:.6g}" for run in runs], numeric=True, kept=True) for name in comparison.directions),
        Column("score", [f"{run['score']:.4f}" for run in runs], numeric=True, kept=True),
        Column("front", ["*" if run["pareto"] else "" for run in runs], kept=True),
        *(Column(names[key], [cell_text(run.get(PARAM_PREFIX + key)) or "-" for run in runs]) for key in param_order(params, runs)),
    ]


def fit_table(columns: list[Column], width: int | None) -> tuple[list[Column], list[Column]]:
    """fit_columns, after cutting the runs' names when the columns always shown are wider than width."""
    kept = [column for column in columns if column.kept]
    excess = table_width(kept) - width if width is not None else 0
    if excess > 0:
        run = next(column for column in columns if column.header == "run")
        longest = max((len(cell) - SHORT_RUN_ID - 1 for cell in run.cells), default=0)
        cut = Column(run.header, [_cut(cell, max(longest - excess, SHORTEST_NAME)) for cell in run.cells], kept=True)
        columns = [cut if column is run else column for column in columns]
    return fit_columns(columns, width)


def _cut(cell: str, name_width: int) -> str:
    """A run cell (unique_name) with its name part cut to name_width: the run id's start is what tells runs apart."""
    name, _, run_id = cell.rpartition(" ")
    return f"{name[: name_width - 2]}.. {run_id}" if len(name) > name_width else cell


def render(columns: Sequence[Column], group_sizes: Sequence[int]) -> str:
    """The columns as a plain-text table: headers, a rule, then the rows, a rule between two groups of rows."""
    rule = ["-" * column.width for column in columns]
    rows: list[list[str]] = [[column.header for column in columns], rule]
    cells = list(zip(*(column.cells for column in columns), strict=True))
    start = 0
    for index, size in enumerate(group_sizes):
        rows += [rule] if index else []
        rows += [list(row) for row in cells[start : start + size]]
        start += size
    text = tabulate(rows, tablefmt="plain", disable_numparse=True, colalign=["right" if column.numeric else "left" for column in columns])
    return "\n".join(line.rstrip() for line in text.splitlines())
