"""What the commands share for output: the two consoles, the error exit, the
progress bar and tables of data. Tables and JSON go to stdout; errors and progress to
stderr.

Data (answers, categories, model names, anything a client or a provider wrote) is
shown as it is: never read as Rich markup, and with control characters written out
("\\x1b"), so a value cannot clear the screen, retitle the terminal or hide a link.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

# C0 and C1 control characters but newline and tab, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(value: object) -> Text:
    """A value as plain text for a terminal: no markup, control characters written out."""
    return Text(_visible(str(value)))


def inline(value: object) -> str:
    """A value to put inside a markup string: escaped, control characters written out."""
    return escape(_visible(str(value)))


def _visible(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class DataTable(Table):
    """A table whose string cells are data (``shown``), not markup."""

    def add_row(self, *renderables: Any, **options: Any) -> None:
        cells = (shown(r) if isinstance(r, str) else r for r in renderables)
        super().add_row(*cells, **options)


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
