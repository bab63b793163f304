"""JSON Schemas of the event catalog, generated into schema/events/ and checked for drift.

One file per event type, ``<event type>.json``, describing the stored ``data`` column.
``python -m service.domain.schemas --write`` regenerates them; ``--check`` exits 1 and
names every file that no longer matches the code (changed, missing, or left over from
an event type that is gone).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from service.domain.events import CATALOG, Event

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def default_directory() -> Path:
    """schema/events in a source checkout, else the copy packaged inside the wheel."""
    source = Path(__file__).resolve().parents[2] / "schema"
    root = source if source.is_dir() else Path(__file__).resolve().parents[1] / "_schema"
    return root / "events"


def event_schema(cls: type[Event]) -> dict[str, Any]:
    """The JSON Schema of one event type's data, tagged with its type and version."""
    schema: dict[str, Any] = msgspec.json.schema(cls)
    schema["$schema"] = DIALECT
    schema["x-event-type"] = cls.type
    schema["x-schema-version"] = cls.schema_version
    return schema


def render(cls: type[Event]) -> str:
    """The file text: pretty, sorted keys (stable diffs), trailing newline."""
    return json.dumps(event_schema(cls), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> text, for every event type in the catalog."""
    return {f"{cls.type}.json": render(cls) for cls in CATALOG}


def drift(directory: Path) -> list[str]:
    """One line per file that does not match the code; empty when all is current."""
    expected = expected_files()
    present = {p.name for p in directory.glob("*.json")}
    problems: list[str] = []
    for name in sorted(expected.keys() | present):
        if name not in present:
            problems.append(f"{name}: missing")
        elif name not in expected:
            problems.append(f"{name}: no event type {name.removesuffix('.json')!r} in the catalog")
        elif (directory / name).read_text(encoding="utf-8") != expected[name]:
            problems.append(f"{name}: differs from the code")
    return problems


def write(directory: Path) -> list[str]:
    """Bring the directory up to date; returns what was written or removed."""
    directory.mkdir(parents=True, exist_ok=True)
    expected = expected_files()
    changed: list[str] = []
    for path in sorted(directory.glob("*.json")):
        if path.name not in expected:
            path.unlink()
            changed.append(f"removed {path.name}")
    for name, text in expected.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(f"wrote {name}")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: --write or --check; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m service.domain.schemas",
        description="Generate or check schema/events/*.json from the event catalog.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the files")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file drifted")
    parser.add_argument("--directory", type=Path, default=default_directory())
    args = parser.parse_args(argv)
    if args.write:
        for line in write(args.directory) or ["event schemas are up to date"]:
            print(line)
        return 0
    problems = drift(args.directory)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print("run `make schemas` and commit schema/events/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
