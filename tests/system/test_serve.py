"""`make serve` / `make stop` (deploy/serve.sh): Prefect's own background server and a worker,
started, inspected and stopped as a user does, against a real Prefect server.

The state folder (PREFECT_HOME, server.pid, worker.pid, logs) is a temporary one
(MASTER_SERVE_DIR), so a developer's own `.prefect-local/` is never touched; whatever a test
started is stopped whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import PROJECT, log_tail

SERVE = PROJECT / "deploy" / "serve.sh"
VENV = Path(sys.executable).parent.parent  # the virtualenv running these tests


#: where make serve's alert automation (deploy/alerts.yaml) would POST; nothing listens
ALERT_URL = "http://127.0.0.1:9/master-alert"


def _serve(command: str, state: Path, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        MASTER_SERVE_DIR=str(state), MASTER_VENV=str(VENV), MASTER_ALERT_WEBHOOK_URL=ALERT_URL
    )
    return subprocess.run(
        ["bash", str(SERVE), command],
        capture_output=True, text=True, cwd=PROJECT, env=env, timeout=timeout,
    )  # fmt: skip


def _running(pid: int, group: bool = False) -> bool:
    """Whether process `pid` is alive (with `group`, any process of the group it leads)."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _api(state: Path) -> str:
    line = next(x for x in (state / "env").read_text().splitlines() if "PREFECT_API_URL=" in x)
    return line.split("=", 1)[1]


def test_serve_starts_reports_and_stops_exactly_what_it_started(tmp_path: Path) -> None:
    state = tmp_path / "prefect-local"
    server = worker = 0
    try:
        started = _serve("start", state)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        assert "Prefect is serving MASTER" in started.stdout
        server = int((state / "server.pid").read_text())  # Prefect's own record
        worker = int((state / "worker.pid").read_text())
        assert _running(server) and _running(worker, group=True)
        api = _api(state)
        with httpx.Client(base_url=api, timeout=30) as client:
            assert client.get("/health").status_code == 200
            names = {d["name"] for d in client.post("/deployments/filter", json={}).json()}
            assert names >= {"nightly", "adhoc", "experiment"}
            (alert,) = client.post("/automations/filter", json={}).json()
            assert alert["name"] == "master-nightly-failed" and alert["enabled"]
            (action,) = alert["actions"]
            assert action["type"] == "call-webhook"
            block = client.get(f"/block_documents/{action['block_document_id']}",
                               params={"include_secrets": True}).json()  # fmt: skip
            assert block["name"] == "master-alert-webhook"
            assert block["data"]["url"] == ALERT_URL
            deadline = time.monotonic() + 120  # the worker registers on its first poll
            while not any(
                w["name"] == "master-local"
                for w in client.post("/work_pools/master-process/workers/filter", json={}).json()
            ):
                assert _running(worker, group=True), log_tail(state / "logs" / "worker.log")
                assert time.monotonic() < deadline, "the worker never polled the work pool"
                time.sleep(1)

        again = _serve("start", state)  # a second start refuses and changes nothing
        assert again.returncode == 1 and "already started" in again.stderr
        assert int((state / "server.pid").read_text()) == server

        status = _serve("status", state)
        assert status.returncode == 0 and "Server is available" in status.stdout
        assert f"server ({server}) running" in status.stdout
        assert f"worker ({worker}) running" in status.stdout

        stopped = _serve("stop", state)
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopped worker ({worker})" in stopped.stdout and "Server stopped" in stopped.stdout
        assert not _running(server) and not _running(worker, group=True)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{api}/health", timeout=5)
        assert not any((state / name).exists() for name in ("server.pid", "worker.pid", "env"))

        twice = _serve("stop", state)
        assert twice.returncode == 0 and "nothing to stop" in twice.stdout
        assert _serve("status", state).stdout.strip() == "not running"
    finally:
        if server and _running(server):
            os.kill(server, signal.SIGKILL)
        if worker and _running(worker, group=True):
            os.killpg(worker, signal.SIGKILL)


def test_stop_leaves_alone_what_the_records_no_longer_point_at(tmp_path: Path) -> None:
    """A recorded pid that now belongs to another program is never signalled, one that has
    ended is reported; the records are cleared either way."""
    state = tmp_path / "prefect-local"
    state.mkdir()
    bystanders = [subprocess.Popen(["sleep", "120"], start_new_session=True) for _ in range(2)]
    ended = subprocess.Popen(["true"], start_new_session=True)
    ended.wait()
    try:
        (state / "server.pid").write_text(str(bystanders[0].pid))
        (state / "worker.pid").write_text(str(bystanders[1].pid))
        stopped = _serve("stop", state, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.count("left alone") == 2
        assert all(p.poll() is None for p in bystanders)  # still running: not signalled
        assert not (state / "server.pid").exists() and not (state / "worker.pid").exists()

        (state / "worker.pid").write_text(str(ended.pid))
        stopped = _serve("stop", state, timeout=120)
        assert f"worker ({ended.pid}) already stopped" in stopped.stdout
        assert not (state / "worker.pid").exists()
    finally:
        for p in bystanders:
            p.kill()
            p.wait()
