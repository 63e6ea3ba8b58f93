"""The replica-pool bench (`python benchmarks/run.py --only pool`): throughput over 1, 2 and
4 replicas of a server that serves at most 16 requests at once (`../shared/peers-bench/
fake_llm.py --capacity 16`, 200 ms a request, the rest queued as on a GPU server at its batch
limit), and with one of two replicas killed (SIGKILL) once 30% of the calls are served.

Each run is `master run`'s pipeline in this process (error correction only: 3 calls a seed,
667 seeds, about 2,000 calls; 128 dialogues in flight, enough to fill 4 x 16 slots), and its
throughput is calls answered over the simulate stage's wall time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT.parent / "shared" / "peers-bench" / "fake_llm.py"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """fake_llm.py in its own process on a free loopback port."""

    def __init__(self, capacity: int, latency_ms: float) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE), "--port", str(self.port), "--capacity", str(capacity),
             "--latency-ms", str(latency_ms)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"fake_llm.py did not start on port {self.port}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _config(tmp: Path, bases: list[str], seeds: int, concurrency: int) -> Path:
    import yaml

    lms = {
        role: {"model": f"openai/{role}", "api_base": bases, "temperature": t, "max_tokens": 256}
        for role, t in (("weak", 0.8), ("peer", 0.6), ("strong", 0.2), ("judge", 0.0))
    }
    path = tmp / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "lms": lms,
                "seeds": {
                    "sources": [{"path": str(GSM8K), "domain": "math", "name": "gsm8k"}],
                    "sample": seeds,
                },
                "scenarios": {"proportions": {"error_correction": 1}},
                "quality": {"judge": False, "hard": []},
                "cache": {"dir": str(tmp / "cache")},
                "run": {"concurrency": concurrency},
            }
        )
    )
    return path


def _run(
    replicas: int,
    seeds: int,
    concurrency: int,
    kill_at: float | None = None,
    capacity: int = 16,
    latency_ms: float = 200.0,
) -> dict[str, Any]:
    from conftest import hashing_embedder
    from flows.core.config import load_config
    from flows.runs.pipeline import drive
    from flows.runs.shards import simulate_jobs
    from flows.runs.stages import Stages

    servers = [Replica(capacity, latency_ms) for _ in range(replicas)]
    span: dict[str, float] = {}
    killed: dict[str, Any] = {}

    def timed(*args: Any, **kwargs: Any) -> Any:
        span["start"] = time.monotonic()
        try:
            return simulate_jobs(*args, **kwargs)
        finally:
            span["end"] = time.monotonic()

    def killer(expected: int) -> None:
        while "end" not in span:
            served = [s.stats()["ok"] for s in servers]
            if sum(served) >= kill_at * expected:  # type: ignore[operator]
                servers[-1].kill()
                killed.update(at=time.monotonic(), survivors_ok=sum(served[:-1]))
                return
            time.sleep(0.02)

    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(_config(Path(tmp), [s.base_url for s in servers], seeds,
                                      concurrency), environ={})  # fmt: skip
            watcher = None
            if kill_at is not None:
                watcher = threading.Thread(target=killer, args=(3 * seeds,), daemon=True)
                watcher.start()
            result = drive(cfg, Path(tmp) / "out", embedder=hashing_embedder,
                           stages=Stages(simulate=timed))  # fmt: skip
            if watcher is not None:
                watcher.join(timeout=10)
            survivors_ok = sum(s.stats()["ok"] for s in servers[: len(servers) - bool(kill_at)])
    finally:
        for server in servers:
            server.kill()
    summary = result.summary
    calls = summary["lm"]["calls"]
    wall = span["end"] - span["start"]
    figures: dict[str, Any] = {
        "calls": calls,
        "dialogues": sum(summary["dialogues"].values()),
        "failed": summary["quality"]["failed"],
        "simulate_wall_s": round(wall, 2),
        "calls_per_s": round(calls / wall, 1),
    }
    if killed:
        after = survivors_ok - killed["survivors_ok"]
        figures["calls_per_s_after_kill"] = round(after / (span["end"] - killed["at"]), 1)
        figures["ejections"] = sum(
            r["ejections"] for role in summary["lm"]["by_role"].values()
            for r in role.get("replicas", {}).values()
        )  # fmt: skip
        figures["attempts"] = sum(
            r["calls"] for role in summary["lm"]["by_role"].values()
            for r in role.get("replicas", {}).values()
        )  # fmt: skip
    return figures


def bench_pool(seeds: int = 667, concurrency: int = 128) -> dict[str, Any]:
    """Throughput over 1, 2, 4 replicas, and 2 with one killed at 30% of the calls."""
    runs: dict[int, dict[str, Any]] = {n: _run(n, seeds, concurrency) for n in (1, 2, 4)}
    kill = _run(2, seeds, concurrency, kill_at=0.3)
    one, two = runs[1]["calls_per_s"], runs[2]["calls_per_s"]
    figures: dict[str, Any] = {
        "calls": runs[1]["calls"],
        "capacity_latency": "16 at once, 200 ms",
        "ideal_calls_per_s_per_replica": 80,
        **{f"calls_per_s_{n}_replicas": runs[n]["calls_per_s"] for n in runs},
        "speedup_2_replicas": round(two / one, 2),
        "speedup_4_replicas": round(runs[4]["calls_per_s"] / one, 2),
        "killed_run_dialogues": kill["dialogues"],
        "killed_run_failed": kill["failed"],
        "killed_run_attempts_vs_calls": f"{kill['attempts']} / {kill['calls']}",
        "killed_run_ejections": kill["ejections"],
        "after_kill_share_of_2_replicas": round(kill["calls_per_s_after_kill"] / two, 3),
        "command": "python benchmarks/run.py --only pool",
    }
    return figures
