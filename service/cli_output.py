"""What the commands share for output: the two consoles, the error exit and the
progress bar. Tables and JSON go to stdout; errors and progress to stderr."""

from __future__ import annotations

from typing import NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``. The message is shown
    as it is (brackets in it are not markup) and not wrapped: a line stays one line."""
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise SystemExit(code)


def note(message: str) -> None:
    """Print ``message`` on stderr as one line: what a user needs to know even with
    --json (whose stdout stays the report alone), e.g. the id of work that outlives
    the command."""
    err_console.print(escape(message), soft_wrap=True, highlight=False)


def progress_bar(
    label: str, *, on: Console = err_console, quiet: bool = False, transient: bool = True
) -> Progress:
    """A bar with the label, done/total and elapsed time; off when asked to be quiet
    (--quiet, --json) or when the console is not a terminal."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=on,
        transient=transient,
        disable=quiet or not on.is_terminal,
    )


def id_column(header: str, values: list[str]) -> Column:
    """A table column for ids a user copies into the next command (keys revoke, a
    stream to inspect): never cut short, however narrow the terminal; the other
    columns give way."""
    return Column(header, no_wrap=True, min_width=max((len(v) for v in values), default=0))
