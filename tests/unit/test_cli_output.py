"""Data in the CLI's tables and lines is shown as it is: not markup, no live control
characters (a category or a model's answer could clear the screen or hide a link)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from service.cli_output import DataTable, inline, shown

HOSTILE = "\x1b[2J\x1b]0;pwned\x07[link=http://evil.example/]ok[/link][/]"


def render(*items: object) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    for item in items:
        console.print(item)
    return out.getvalue()


def test_a_table_cell_is_data() -> None:
    table = DataTable("category")
    table.add_row(HOSTILE)
    text = render(table)
    assert "\x1b]0;" not in text and "\x07" not in text and "\x1b[2J" not in text
    assert "\\x1b[2J\\x1b]0;pwned\\x07[link=http://evil.example/]ok[/link][/]" in text


def test_a_value_in_a_line_of_markup_is_data() -> None:
    # "[/]" alone made Rich raise a MarkupError: `fuse` printed a traceback.
    text = render(f"[bold]eval[/bold] {inline(HOSTILE)}", shown("answer: [/]"))
    assert "[link=http://evil.example/]ok[/link][/]" in text
    assert "answer: [/]" in text and "\x1b[2J" not in text


def test_line_breaks_and_tabs_stay() -> None:
    assert shown("a\nb\tc").plain == "a\nb\tc"
    assert shown("\x9b31m").plain == "\\x9b31m"  # the one-byte C1 escape too


def test_a_first_eval_does_not_say_it_resumed(capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli_eval import Report, print_report

    print_report(Report(eval="new", dataset="d.jsonl", lines=5, outcomes_recorded=5,
                        outcomes_existing=0, summary=[], items=[]))  # fmt: skip
    first = capsys.readouterr().out
    assert "5 outcomes recorded now" in first and "resumed" not in first
    print_report(Report(eval="new", dataset="d.jsonl", lines=5, outcomes_recorded=2,
                        outcomes_existing=3, summary=[], items=[]))  # fmt: skip
    assert "3 recorded before (resumed)" in capsys.readouterr().out
