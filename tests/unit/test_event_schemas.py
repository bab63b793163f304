"""schema/events/*.json is generated from the catalog and must not drift from it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.domain.events import CATALOG
from service.domain.schemas import default_directory, drift, expected_files, main, write

COMMITTED = default_directory()


def test_committed_schemas_match_the_catalog() -> None:
    problems = drift(COMMITTED)
    assert problems == [], "event schemas drifted; run `make schemas`:\n" + "\n".join(problems)


def test_every_event_type_has_a_schema_naming_it() -> None:
    for cls in CATALOG:
        schema = json.loads((COMMITTED / f"{cls.type}.json").read_text())
        assert schema["x-event-type"] == cls.type
        assert schema["x-schema-version"] == cls.schema_version
        definition = schema["$defs"][cls.__name__]
        assert set(definition["properties"]) == set(cls.__struct_fields__)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    directory = tmp_path / "events"
    write(directory)
    assert drift(directory) == []
    return directory


def test_changed_file_is_drift(copy: Path) -> None:
    path = copy / "run.failed.json"
    path.write_text(path.read_text().replace('"message"', '"msg"'))
    assert drift(copy) == ["run.failed.json: differs from the code"]


def test_missing_file_is_drift(copy: Path) -> None:
    (copy / "judge.decided.json").unlink()
    assert drift(copy) == ["judge.decided.json: missing"]


def test_file_without_an_event_type_is_drift(copy: Path) -> None:
    shutil.copy(copy / "run.failed.json", copy / "run.vanished.json")
    assert drift(copy) == ["run.vanished.json: no event type 'run.vanished' in the catalog"]


def test_write_repairs_all_drift(copy: Path) -> None:
    (copy / "judge.decided.json").unlink()
    (copy / "run.failed.json").write_text("{}\n")
    (copy / "run.vanished.json").write_text("{}\n")
    assert sorted(write(copy)) == [
        "removed run.vanished.json",
        "wrote judge.decided.json",
        "wrote run.failed.json",
    ]
    assert drift(copy) == []
    assert sorted(p.name for p in copy.iterdir()) == sorted(expected_files())


def test_check_exits_1_and_lists_drifted_files(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--check", "--directory", str(copy)]) == 0
    (copy / "run.failed.json").write_text("{}\n")
    assert main(["--check", "--directory", str(copy)]) == 1
    assert "run.failed.json: differs from the code" in capsys.readouterr().err


def test_module_runs_as_a_command(copy: Path) -> None:
    (copy / "run.failed.json").unlink()
    command = [sys.executable, "-m", "service.domain.schemas", "--check", "--directory", str(copy)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "run.failed.json: missing" in result.stderr


def test_domain_stays_free_of_io_libraries() -> None:
    code = (
        "import sys, service.domain.schemas; "
        "print(sorted({'asyncpg', 'httpx', 'litestar'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
