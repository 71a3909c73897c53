"""The structure inside a stored run log, and turning it into step sections for the pages.

The log stays text (old logs render as they are): the runner marks two kinds of line with a control
character no step can write (it removes them from the step's output before storing it):
- STEP_MARK starts a line the runner wrote about a step: its start ("==> step 2/3: deploy", as before) and
  its end ("==> step 2/3 failed with exit code 1 after 4.2 s").
- STDERR_MARK starts a line the step wrote to its standard error.
Timestamps are the times the chunks were stored (the runner flushes every LOG_FLUSH_SECONDS), so every
line carries the time it reached the portal. `plain()` gives the text as a reader downloads it."""

import re
from dataclasses import dataclass, field

STEP_MARK = "\x1e"
STDERR_MARK = "\x1f"
# How a step's line begins in a log written before the runner marked its lines.
UNMARKED_STEP = "==> step "
_MARKS = {ord(STEP_MARK): None, ord(STDERR_MARK): None}

_LINES = re.compile(r"[^\n]*\n|[^\n]+")
_STARTED = re.compile(r"==> step (\d+)/(\d+): (.*)")
_ENDED = re.compile(r"==> step (\d+)/(\d+) (succeeded|failed|timed out|cancelled|stopped)"
                    r"(?: with exit code (-?\d+))? after ([\d.]+) s")


def without_marks(text):
    """A step's own output, with the marks it could use to forge structure removed."""
    return text.translate(_MARKS)


def has_step_lines(text):
    """True when `text` may hold a line about a step (marked, or as in an old log): run_log.tail keeps those."""
    return STEP_MARK in text or UNMARKED_STEP in text


def plain(text):
    """The log as a reader downloads it: the lines as the steps printed them, the marks removed."""
    return text.translate(_MARKS)


def mark_errors(text, *, at_line_start):
    """Prefix each line of `text` (from the step's stderr) with STDERR_MARK; the first only when it begins a
    line (`at_line_start`), since otherwise it continues one already marked."""
    lines = _LINES.findall(text)
    return "".join(
        line if index == 0 and not at_line_start else STDERR_MARK + line for index, line in enumerate(lines)
    )


def step_started(number, total, name, command):
    """The step's header and its command, each line marked, so the page tells the command from the output."""
    lines = command.rstrip("\n").split("\n")
    shown = [f"{STEP_MARK}$ {lines[0]}\n", *(f"{STEP_MARK}  {line}\n" for line in lines[1:])]
    return f"{STEP_MARK}==> step {number}/{total}: {name}\n" + "".join(shown)


def step_ended(number, total, *, status, exit_code, seconds):
    code = f" with exit code {exit_code}" if exit_code is not None else ""
    return f"{STEP_MARK}==> step {number}/{total} {status}{code} after {seconds:.1f} s\n"


@dataclass
class LogLine:
    text: str
    at: object  # when its chunk was stored (a datetime), None when unknown
    stderr: bool = False
    command: bool = False  # the step's command, as the runner wrote it above the step's output


@dataclass
class StepSection:
    number: int  # 0: what the runner said before the first step
    total: int
    name: str
    started_at: object = None
    lines: list = field(default_factory=list)
    status: str = "running"  # running, succeeded, failed, timed out, cancelled, stopped, or unknown (an old log)
    exit_code: int | None = None
    seconds: float | None = None

    @property
    def failed(self):
        return self.status in ("failed", "timed out", "stopped")

    @property
    def open(self):
        """Shown unfolded: the step that failed, the one running, what came before the first step, and the last
        step, where the run ends (a short last step starts and ends between two polls of a page that follows the
        log: folded, the end the reader followed the log to would be hidden)."""
        return self.number == 0 or self.failed or self.status == "running" or self.number == self.total

    @property
    def css_status(self):
        return self.status.replace(" ", "-")

    @property
    def dom_id(self):
        return f"step-{self.number}"


def lines_of(chunks):
    """LogLines of stored chunks [(seq, text, stored at)]. A line cut between two chunks (output printed
    without its newline yet) is one line, with the time of its beginning."""
    lines = []
    cut = False  # the last chunk ended inside a line
    for _, text, at in chunks:
        if not text:
            continue
        # Split at "\n" only: str.splitlines() would also split at the marks themselves (\x1e is one of its
        # line boundaries).
        pieces = text.removesuffix("\n").split("\n")
        if cut and lines:
            lines[-1].text += pieces.pop(0).removesuffix("\r")
        for raw in pieces:
            raw = raw.removesuffix("\r")
            if raw.startswith(STDERR_MARK):
                lines.append(LogLine(raw[1:], at, stderr=True))
            else:
                lines.append(LogLine(raw, at))
        cut = not text.endswith("\n")
    return lines


def tail(chunks, limit):
    """(chunks to show, how many earlier lines are left out): the page shows the last `limit` lines of a long
    log (all of it is in the raw download). Earlier chunks keep only the runner's step lines, so every step
    still gets its section, state and exit code; a chunk left with nothing is left out. Counting and filtering
    run over whole chunk texts, so a 100,000-line log costs a few milliseconds, not 100,000 LogLines. Lines
    are counted by their newlines, as DeploymentLogChunk.line_count counts them (a line cut between two
    chunks counts once)."""
    kept, count = [], 0
    for index in range(len(chunks) - 1, -1, -1):
        lines_here = chunks[index][1].count("\n")
        if count + lines_here > limit:
            break
        count += lines_here
        kept.append(chunks[index])
    else:
        return chunks, 0
    room, reduced, hidden = limit - count, [], 0  # the chunk at the boundary keeps its last `room` lines
    for position, (seq, text, at) in enumerate(chunks[:index + 1]):
        lines = _LINES.findall(text)  # each with its newline; a line cut at the chunk's end without one
        tail_from = len(lines) - room if position == index else len(lines)
        shown = "".join(line for number, line in enumerate(lines) if number >= tail_from or is_step_line(line))
        hidden += text.count("\n") - shown.count("\n")
        if shown:
            reduced.append((seq, shown, at))
    return reduced + kept[::-1], hidden


def is_step_line(line):
    return line.startswith(STEP_MARK) or line.startswith(UNMARKED_STEP)


def is_unmarked(chunks):
    """True for a log written before the runner marked its lines (its steps are found by their text)."""
    return not any(STEP_MARK in text for _, text, _ in chunks)


def sections(lines, *, current=None, finished=False, unmarked=False):
    """Group lines into StepSections. `current`: the section the first lines belong to (when these lines
    follow others already shown); without one they begin with what came before the first step.
    Only marked lines start and end steps, so a step printing "==> step 9/9: x" starts nothing; but an old
    log has no marks (`unmarked`): its "==> step" lines start sections all the same, without an end."""
    result = []
    section = current if current is not None else StepSection(0, 0, "Preparing", status="succeeded")
    result.append(section)
    for line in lines:
        text = line.text[1:] if line.text.startswith(STEP_MARK) else line.text
        marked = line.text.startswith(STEP_MARK)
        started = _STARTED.fullmatch(text) if marked or (unmarked and not line.stderr) else None
        if started:
            if section.status == "running" and section.number:
                section.status = "unknown"  # an old log: the step ended without saying how
            section = StepSection(int(started[1]), int(started[2]), started[3], started_at=line.at)
            result.append(section)
            continue
        ended = _ENDED.fullmatch(text) if line.text.startswith(STEP_MARK) else None
        if ended and int(ended[1]) == section.number:
            section.status = ended[3]
            section.exit_code = int(ended[4]) if ended[4] is not None else None
            section.seconds = float(ended[5])
            continue
        if line.text.startswith(STEP_MARK):
            line = LogLine(text, line.at, command=True)
        section.lines.append(line)
    if finished and section.status == "running" and section.number and section is not current:
        section.status = "unknown"  # the run ended without the step's end: the runner was stopped
    if not result[0].lines and result[0].number == 0 and len(result) > 1 and current is None:
        result.pop(0)
    return result
