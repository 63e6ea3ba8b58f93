"""kill -9 at several points of a run (loading, writing the outputs): the rerun converges to
the dataset of an uninterrupted run, and no partial file is ever in a finished file's place."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from conftest import PROJECT, role_lms
from fake_llm import FakeLLMServer

OUTPUTS = ("dataset.parquet", "dataset.jsonl", "messages.jsonl", "rejects.parquet", "summary.json")


def _start(config: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--out", str(out)],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[str], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def _complete_or_absent(out: Path) -> None:
    """Every output present is whole: the parquet files read, the JSON parses."""
    for name in OUTPUTS:
        path = out / name
        if not path.exists():
            continue
        if path.suffix == ".parquet":
            pl.read_parquet(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:
            for line in path.read_text().splitlines():
                json.loads(line)


def test_kill_during_loading_and_while_writing_then_the_rerun_converges(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    with FakeLLMServer(latency=0.01) as server:
        config = write_config(role_lms(server.base_url), sample=9)
        out = tmp_path / "out"

        # 1. while loading seeds: before any LM call
        proc = _start(config, out)
        _wait_for(lambda: (tmp_path / "cache").exists(), proc, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        _complete_or_absent(out)
        assert not (out / "summary.json").exists()

        # 2. while writing the outputs: the first output appears, kill at once
        proc = _start(config, out)
        wrote = _wait_for(lambda: (out / "dataset.parquet").exists(), proc, 240)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert wrote or proc.returncode is not None
        _complete_or_absent(out)

        # 3. the rerun finishes, and equals an uninterrupted run on a fresh cache
        proc = _start(config, out)
        assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
        fresh = tmp_path / "fresh.yaml"
        fresh.write_text(config.read_text().replace(str(tmp_path / "cache"), str(tmp_path / "c2")))
        proc = _start(fresh, tmp_path / "clean")
        assert proc.wait(timeout=300) == 0
    for name in ("dataset.jsonl", "messages.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers or all(p.startswith(".") for p in leftovers)
