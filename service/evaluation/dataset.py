"""Reading an evaluation dataset: JSON lines of {"prompt", "category", "expected",
optional "id"}, checked whole before anything runs.

Each line gets a key, its identity within the dataset: its id when it has one, else a
hash of its content. The key (with the evaluation's name and panel) is what makes a
re-run find the runs it made before, so two lines with one key are refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

Text = Annotated[str, msgspec.Meta(min_length=1)]
Category = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # as POST /v1/fusions


class DatasetLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line as written; other fields are allowed and ignored."""

    prompt: Text
    category: Category
    expected: Text | int | float
    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | int | None = None


@dataclass(frozen=True, slots=True)
class EvalItem:
    """One dataset line, checked."""

    line: int  # 1-based line number in the file
    id: str | None
    prompt: str
    category: str
    expected: str
    key: str

    @property
    def name(self) -> str:
        """How messages name this line."""
        return f"line {self.line}" + (f" (id {self.id})" if self.id is not None else "")


class DatasetError(ValueError):
    """A line that cannot be evaluated; nothing has run."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


_decoder = msgspec.json.Decoder(DatasetLine)


def parse_dataset(lines: Iterable[bytes]) -> list[EvalItem]:
    """Every non-blank line as an item; DatasetError names the first bad line."""
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = _decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise DatasetError(number, _explain(exc)) from None
        item = _item(number, row)
        if item.key in seen:
            what = "id" if item.id is not None else "prompt, category and expected answer"
            raise DatasetError(number, f"same {what} as line {seen[item.key]}")
        seen[item.key] = number
        items.append(item)
    if not items:
        raise DatasetError(0, "the dataset has no lines")
    return items


def load_dataset(path: Path) -> list[EvalItem]:
    """parse_dataset over a file."""
    with path.open("rb") as handle:
        return parse_dataset(handle)


def _item(number: int, row: DatasetLine) -> EvalItem:
    expected = row.expected if isinstance(row.expected, str) else str(row.expected)
    if not expected.strip():
        raise DatasetError(number, "expected is blank")
    ident = None if row.id is None else str(row.id)
    if ident is not None:
        key = f"id:{ident}"
    else:
        content = msgspec.json.encode([row.prompt, row.category, expected])
        key = "sha256:" + hashlib.sha256(content).hexdigest()[:32]
    return EvalItem(number, ident, row.prompt, row.category, expected, key)


def _explain(exc: msgspec.DecodeError) -> str:
    message = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        return message  # "Object missing required field `prompt`", "... - at `$.category`"
    return f"not valid JSON ({message})"
