"""The publish stage's imports on a background thread (flows/runs/prewarm.py): they load in a
fresh process, and one that fails is logged and skipped without disturbing anything."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import PROJECT
from flows.runs.prewarm import prewarm

PROBE = """
import json, sys
from flows.runs.prewarm import PUBLISH_IMPORTS, prewarm
before = [m for m in PUBLISH_IMPORTS if m in sys.modules]
thread = prewarm()
thread.join(120)
print(json.dumps({"before": before, "missing": [m for m in PUBLISH_IMPORTS if m not in sys.modules],
                  "daemon": thread.daemon, "alive": thread.is_alive()}))
"""


def test_prewarm_loads_what_publish_imports_in_a_fresh_process() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=PROJECT, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"before": [], "missing": [], "daemon": True, "alive": False}


def test_a_failing_import_is_logged_and_the_others_still_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "prewarm_breaks.py").write_text("raise RuntimeError('broken on import')\n")
    (tmp_path / "prewarm_fine.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("prewarm_breaks", "prewarm_fine"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    uncaught: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    caplog.set_level(logging.DEBUG, logger="master")

    thread = prewarm(["prewarm_no_such_module", "prewarm_breaks", "prewarm_fine"])
    thread.join(30)

    assert not thread.is_alive() and uncaught == []
    assert sys.modules["prewarm_fine"].LOADED is True
    logged = [r.getMessage() for r in caplog.records if "prewarm" in r.getMessage()]
    assert len(logged) == 2
    assert "prewarm_no_such_module not imported: ModuleNotFoundError" in logged[0]
    assert "prewarm_breaks not imported: RuntimeError: broken on import" in logged[1]


def test_a_thread_that_cannot_start_is_logged_and_nothing_is_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The prewarm is called from inside the simulation (stream's on_waiting): a process out
    of threads must not fail the run there."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    caplog.set_level(logging.DEBUG, logger="master")
    assert prewarm(["json"]) is None
    logged = [r.getMessage() for r in caplog.records]
    assert "prewarm: no thread: can't start new thread" in logged
