"""The README and the docs pages as a script: their sections, the shell commands their code blocks show, and the
output they promise.

Conventions, so that the pages stay the one source of what a user types and sees:

- A code block is a run of lines indented by 4 spaces (Markdown's indented code block); blank lines split it
  into paragraphs.
- A line is a command when its first word is one of COMMANDS and it is not a program's own output line
  (`bts serve: ...`, one or two words then a colon). A command goes on over the next lines while a quote is open
  or a line ends with a backslash (the multi-line curl calls); a trailing `# comment` is the shell's.
- A paragraph that starts with a command holds commands; lines right after a command that are not commands are
  what that command prints.
- A command shown with an error line (`prog: error: ...`) must fail (exit non-zero); any other must succeed.
- A paragraph whose first line is `# <file>` (e.g. `# params.yaml`) shows YAML to set in that file.
- Any other paragraph is output: what the commands of the paragraphs before it in the same code block print,
  or, in a block without commands, what the last commands of the same section print. The output paragraphs of a
  code block are found in that order, each as consecutive lines, where a line `...` stands for any number of lines.
- Expected output is compared exactly, except the tokens SHAPES names by their context (run ids, commits,
  DVC experiment names, wall-clock times, durations and rates, the machine, and the md5s of the training code and
  of the package, which holds library modules: both change with an edit of the library): those match by shape,
  and the same token must be the same value wherever it appears in one walk, across pages (two different tokens
  of the pages cannot be one value). In a paragraph with such a token, runs of spaces and of dashes match any
  length, since columns widen with the values. The data md5s stay exact: they are the committed data versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

COMMANDS = frozenset(
    {"make", "dvc", "git", "bts", "mlflow", "python", "curl", "cp", "mv", "rm", "echo", "cat", "ls", "source", "pytest", "export", "cd"}
)
OUTPUT_LINE = re.compile(r"^[\w.-]+(?: [\w.-]+)?: ")  # `bts serve: ...`, `replay: ...`: a program speaking
ERROR_LINE = re.compile(r"^[\w.-]+(?: [\w.-]+)?: error: ")
FILE_EDIT = re.compile(r"^# ([\w./-]+\.(?:ya?ml|json|toml))$")
HEADING = re.compile(r"^(#{1,6}) +(.*?) *$")


@dataclass
class Command:
    text: str  # as the README shows it, comments and line breaks included
    output: list[str] = field(default_factory=list)  # the lines shown right below it

    @property
    def shell(self) -> str:
        """The command without its comments, as bash runs it."""
        return strip_comments(self.text)[0]

    @property
    def fails(self) -> bool:
        """Shown with an error line (`mlproject: error: ...`): the README shows it failing."""
        return any(ERROR_LINE.match(line) for line in self.output)

    @property
    def words(self) -> str:
        """The command on one line, spaces collapsed (how tables in the tests name it)."""
        return " ".join(self.shell.split())


@dataclass
class Commands:
    commands: list[Command]


@dataclass
class Output:
    lines: list[str]


@dataclass
class FileEdit:
    path: str
    text: str


Paragraph = Commands | Output | FileEdit


@dataclass
class Section:
    title: str
    level: int
    blocks: list[list[Paragraph]]  # its code blocks, each a list of paragraphs, in order
    file: str = "README.md"  # the page it is on, relative to the project's root

    @property
    def name(self) -> str:
        """The section as messages name it: `docs/walkthrough.md: Experiments`."""
        return f"{self.file}: {self.title}"


def strip_comments(text: str) -> tuple[str, bool]:
    """(text without its shell comments, whether every quote is closed), read as bash reads it."""
    out: list[str] = []
    quote = ""  # "'", '"', or "$'" (ANSI-C quoting, where a backslash escapes)
    i = 0
    while i < len(text):
        c = text[i]
        if not quote:
            if c == "#" and (i == 0 or text[i - 1].isspace()):
                end = text.find("\n", i)
                i = len(text) if end < 0 else end
                continue
            if c == "\\":
                out.append(text[i : i + 2])
                i += 2
                continue
            if c == "'":
                quote = "$'" if i > 0 and text[i - 1] == "$" else "'"
            elif c == '"':
                quote = '"'
        elif c == "\\" and quote in ('"', "$'"):
            out.append(text[i : i + 2])
            i += 2
            continue
        elif (c == "'" and quote in ("'", "$'")) or (c == '"' and quote == '"'):
            quote = ""
        out.append(c)
        i += 1
    shell = "\n".join(line.rstrip() for line in "".join(out).rstrip().splitlines())
    return shell, not quote


def is_command(line: str) -> bool:
    words = line.split()
    return bool(words) and words[0] in COMMANDS and not line.startswith(" ") and not OUTPUT_LINE.match(line)


def parse_paragraph(lines: list[str]) -> Paragraph:
    edit = FILE_EDIT.match(lines[0])
    if edit:
        return FileEdit(edit.group(1), "\n".join(lines[1:]) + "\n")
    if not is_command(lines[0]):
        return Output(lines)
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        if is_command(lines[i]):
            text = lines[i]
            while (not strip_comments(text)[1] or strip_comments(text)[0].endswith("\\")) and i + 1 < len(lines):
                i += 1
                text += "\n" + lines[i]
            commands.append(Command(text))
        else:
            commands[-1].output.append(lines[i])
        i += 1
    return Commands(commands)


def code_blocks(lines: list[str]) -> list[list[Paragraph]]:
    blocks: list[list[Paragraph]] = []
    i = 0
    while i < len(lines):
        starts_block = lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip())
        if not starts_block:
            i += 1
            continue
        block: list[str] = []
        while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
            block.append(lines[i][4:].rstrip())
            i += 1
        paragraphs, current = [], []
        for line in [*block, ""]:
            if line:
                current.append(line)
            elif current:
                paragraphs.append(parse_paragraph(current))
                current = []
        blocks.append(paragraphs)
    return blocks


def sections(text: str, file: str = "README.md") -> list[Section]:
    """Every heading of a page (`file`) with the code blocks below it (up to the next heading of any level)."""
    found: list[tuple[str, int, list[str]]] = []
    body: list[str] = []
    title, level = "", 0
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            found.append((title, level, body))
            title, level, body = heading.group(2), len(heading.group(1)), []
        else:
            body.append(line)
    found.append((title, level, body))
    return [Section(title, level, code_blocks(lines), file) for title, level, lines in found if title]


def find_section(all_sections: list[Section], title: str, file: str = "README.md") -> Section:
    """The section of one page with this heading, or the one whose heading starts with it (`Monitoring` for `Monitoring: ...`)."""
    matches = [s for s in all_sections if s.title == title] or [s for s in all_sections if s.title.startswith(title)]
    assert len(matches) == 1, f"{file} has {len(matches)} sections headed {title!r}: {[s.title for s in all_sections]}"
    return matches[0]


@dataclass(frozen=True)
class Shape:
    """A token of the README's output that varies from run to run: group 1 of `where`, on lines matching `lines`."""

    kind: str
    where: str
    matches: str
    identity: bool = True  # names one thing: two README tokens of this kind cannot be the same value
    lines: str = ""


SHAPES = [
    Shape("run id", r"\brun\s+([0-9a-f]{32})\b", r"[0-9a-f]{32}"),
    Shape("run id", r"\bID '([0-9a-f]{32})'", r"[0-9a-f]{32}"),  # mlflow's own log lines
    Shape("run id", r"--report ([0-9a-f]{32})\b", r"[0-9a-f]{32}"),  # the monitoring report a `bts retrain` names
    Shape("commit", r"\bcommit\s+([0-9a-f]{40})\b", r"[0-9a-f]{40}"),
    Shape("run name", r"\b([a-z][a-z_]*-[0-9a-f]{7})\b(?!-)", r"[a-z][a-z_]*-[0-9a-f]{7}"),  # <model>-<short commit>
    # `bts compare` rows: the run id's first 8 characters, and DVC's random experiment names
    Shape("run id prefix", r"^ *\d+  \S+ +([0-9a-f]{8}) ", r"[0-9a-f]{8}", lines=r"^ *\d+  "),
    Shape("experiment", r"\b([a-z]+-[a-z]+)\b", r"[a-z]+-[a-z]+", lines=r"^ *\d+  "),
    Shape("experiment", r"\bexperiment(?:\(s\):)? '?([a-z]+-[a-z]+)\b(?!-)", r"[a-z]+-[a-z]+"),  # DVC's own lines
    # the training code's md5, and the package's (which holds library modules): both change with any code edit
    Shape("code md5", r"\bcode(?:_md5(?: \(ran\))?| +md5) +([0-9a-f]{32}\.dir)", r"[0-9a-f]{32}\.dir"),
    Shape("package md5", r"\bpackage(?:_md5| +md5) +([0-9a-f]{32}\.dir)", r"[0-9a-f]{32}\.dir"),
    # wall-clock times (the readings themselves are from 2017), who did it, and what it cost
    Shape(
        "time",
        r"(?<![\d-])(20[2-9]\d-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)?)",
        r"\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d)?",
        False,
    ),
    Shape("time", r"(?<![\d-])(20[2-9]\d-\d\d-\d\d \d\d:\d\d(?::\d\d)? UTC)", r"\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)? UTC", False),
    Shape("time", r"^(20\d\d/\d\d/\d\d \d\d:\d\d:\d\d) ", r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d", False),  # MLflow's log lines
    Shape("time", r"reports/(\d{8}T\d{6}Z-[0-9a-f]{8})/", r"\d{8}T\d{6}Z-[0-9a-f]{8}", False),
    Shape("user", r"\bby ([\w.-]+): ", r"[\w.-]+", False),
    Shape("cost", r"\btraining\.(?:seconds|cpu_seconds|peak_memory_mb) (\d+(?:\.\d+)?)", r"\d+(?:\.\d+)?", False),
    Shape("cost", r"\btraining (\d+(?:\.\d+)?) s, \d+ MB peak\b", r"\d+(?:\.\d+)?", False),  # bts lineage's run line
    Shape("cost", r"\btraining \d+(?:\.\d+)? s, (\d+) MB peak\b", r"\d+", False),
    Shape("machine", r"^ *machine: (.+)$", r".+", False),
    Shape("duration", r"\bin (\d+(?:\.\d+)?) m?s\b", r"\d+(?:\.\d+)?", False),
    Shape("duration", r"\bp\d\d (\d+(?:\.\d+)?) ms\b", r"\d+(?:\.\d+)?", False),
    Shape("rate", r"\((\d+(?:\.\d+)?) rows/s\)", r"\d+(?:\.\d+)?", False),
]


def tokens(line: str) -> list[tuple[int, int, Shape]]:
    """The varying tokens of a README output line: (start, end, shape), in order, not overlapping."""
    found: list[tuple[int, int, Shape]] = []
    for shape in SHAPES:
        if shape.lines and not re.search(shape.lines, line):
            continue
        for m in re.finditer(shape.where, line):
            start, end = m.span(1)
            if all(end <= s or start >= e for s, e, _ in found):
                found.append((start, end, shape))
    return sorted(found, key=lambda t: t[0])


def literal(text: str, loose: bool) -> str:
    if not loose:
        return re.escape(text)
    parts = re.split(r"( {2,}|-{2,})", text)
    return "".join((" +" if p.startswith(" ") else "-+") if re.fullmatch(r" {2,}|-{2,}", p) else re.escape(p) for p in parts)


@dataclass
class Match:
    end: int  # index of the line after the match
    bound: dict[str, tuple[str, str]]  # README token -> (value, kind), new in this match


def pattern(lines: list[str], bindings: dict[str, tuple[str, str]]) -> tuple[str, dict[str, tuple[str, Shape]]]:
    """A regex for these README lines (joined by newlines), with a named group for each varying token not yet bound."""
    groups: dict[str, tuple[str, Shape]] = {}  # token -> (group name, shape)
    spans = [tokens(line) for line in lines]
    loose = any(spans)
    out = []
    for line, found in zip(lines, spans, strict=True):
        indent = len(line) - len(line.lstrip(" "))
        regex, pos = re.escape(line[:indent]), indent
        for start, end, shape in found:
            regex += literal(line[pos:start], loose)
            token = line[start:end]
            if token in bindings:
                regex += re.escape(bindings[token][0])
            elif token in groups:
                regex += f"(?P={groups[token][0]})"
            else:
                groups[token] = (f"t{len(groups)}", shape)
                regex += f"(?P<t{len(groups) - 1}>{shape.matches})"
            pos = end
        regex += literal(line[pos:], loose)
        out.append(regex)
    return "\n".join(out), groups


def find(expected: list[str], actual: list[str], start: int, bindings: dict[str, tuple[str, str]]) -> Match | str:
    """Where the expected lines appear, as consecutive lines of the actual ones at or after `start`; else why not.

    `bindings` holds the value each varying README token took earlier in the walk (README token -> (value, kind)).
    """
    regex, groups = pattern(expected, bindings)
    compiled = re.compile(regex)
    for i in range(start, len(actual) - len(expected) + 1):
        m = compiled.fullmatch("\n".join(actual[i : i + len(expected)]))
        if not m:
            continue
        bound = {token: (m.group(name), shape.kind) for token, (name, shape) in groups.items()}
        for token, (_, shape) in groups.items():
            value = bound[token][0]
            for other, (other_value, other_kind) in [*bindings.items(), *bound.items()]:
                if shape.identity and other != token and (other_value, other_kind) == (value, shape.kind):
                    return f"the README shows two different {shape.kind}s, {other} and {token}, where the project prints one: {value}"
        return Match(i + len(expected), bound)
    return "not found"


ELISION = "..."


def find_lines(expected: list[str], actual: list[str], start: int, bindings: dict[str, tuple[str, str]]) -> Match | str:
    """As `find`, where a line `...` in the expected ones stands for any number of lines."""
    segments: list[list[str]] = [[]]
    for line in expected:
        if line == ELISION:
            segments.append([])
        else:
            segments[-1].append(line)
    known, bound, pos = dict(bindings), {}, start
    for segment in (s for s in segments if s):
        found = find(segment, actual, pos, known)
        if isinstance(found, str):
            return found
        known.update(found.bound)
        bound.update(found.bound)
        pos = found.end
    return Match(pos, bound)


def closest(expected: list[str], actual: list[str], bindings: dict[str, tuple[str, str]]) -> list[str]:
    """The printed lines that come nearest to the expected ones, each mismatch under the README line it misses."""
    expected = [line for line in expected if line != ELISION]
    regexes = [re.compile(pattern([line], bindings)[0]) for line in expected]
    if not actual:
        return ["(nothing printed)"]
    scores = [
        sum(1 for k, regex in enumerate(regexes) if i + k < len(actual) and regex.fullmatch(actual[i + k])) for i in range(len(actual))
    ]
    best = max(range(len(actual)), key=lambda i: scores[i])
    shown = []
    for k, (line, regex) in enumerate(zip(expected, regexes, strict=True)):
        printed = actual[best + k] if best + k < len(actual) else "(end of output)"
        if regex.fullmatch(printed):
            shown.append(f"    {printed}")
        else:
            shown += [f"  - {line}", f"  + {printed}"]
    return shown
