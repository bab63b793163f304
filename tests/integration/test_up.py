"""`fusion-ledger up` from a clean data folder: embedded Postgres, simulator, API;
stopped with Ctrl-C and started again, it still has the earlier run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(data_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "FUSION_LEDGER_DATABASE_URL", "FUSION_LEDGER_CONFIG")
    }
    env["FUSION_LEDGER_DATA_DIR"] = str(data_dir)
    return env


def start(data_dir: Path, port: int, sim_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = environment(data_dir)
    command = [
        sys.executable,
        "-m",
        "service",
        "up",
        "--port",
        str(port),
        "--simulator-port",
        str(sim_port),
    ]
    return subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"up exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not ready in time:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes], how: signal.Signals = signal.SIGINT) -> int:
    process.send_signal(how)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_up_serves_and_keeps_runs_across_restarts(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "up.log"
    port, sim_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(data, port, sim_port, log)
    try:
        wait_ready(url, process, log)
        response = httpx.post(
            f"{url}/v1/fusions",
            timeout=60,
            json={"prompt": "What is 6 * 7? Reply with the number."},
        )
        assert response.status_code == 200, response.text
        run_id = response.json()["run_id"]
        assert response.json()["status"] == "finalized"
    finally:
        assert stop(process) == 0, log.read_text()
    assert "simulator" in log.read_text()  # it says the providers are simulated
    # As after an `up` killed outright: its process id stays in pgserver's list of the
    # server's users, and the next `up` never stopped the embedded Postgres again.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    next(data.rglob(".handle_pids.json")).write_text(json.dumps([dead.pid]))
    process = start(data, port, sim_port, log)
    try:
        wait_ready(url, process, log)
        again = httpx.get(f"{url}/v1/runs/{run_id}", timeout=10)
        assert again.status_code == 200
        assert [e["event_type"] for e in again.json()["events"]][-1] == "answer.finalized"
        # Beside `up`, the database commands find its embedded Postgres by themselves
        # (they said "no database given", and `up` never said where it was).
        status = subprocess.run(
            [sys.executable, "-m", "service", "verify", "--json"],
            env=environment(data),
            capture_output=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr.decode()
        assert b'"ok": true' in status.stdout or b'"ok":true' in status.stdout
    finally:
        # As a service manager stops it: the embedded Postgres stops too (it was left
        # running when the signal's default action ended the process).
        assert stop(process, signal.SIGTERM) in (0, -signal.SIGTERM), log.read_text()
    assert list(data.rglob("postmaster.pid")) == [], log.read_text()
