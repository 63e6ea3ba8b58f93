"""Replica pools through the whole pipeline, against several fake servers on loopback: a
replica killed mid-run costs no dialogue and few requests, its counts reach summary.json and
report.md, `master lm check` checks each replica, and a run whose replicas are all dead stops
with one line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from conftest import latest_attempt, role_lms, run_cli
from fake_llm import FakeLLMServer

SEEDS = 45


def _start(n: int) -> list[FakeLLMServer]:
    return [FakeLLMServer(latency=0.03).start() for _ in range(n)]


def _run_killing(
    write_config: Callable[..., Path], where: Path, kill_after: int | None
) -> tuple[dict, list[tuple[str, int]]]:
    """A run (in this process, the tests' hashing retriever) over three replicas; with
    `kill_after`, the third is stopped once it has answered that many requests. Returns
    summary.json and each server's base URL and request count."""
    from conftest import hashing_embedder
    from flows.core.config import load_config
    from flows.runs.pipeline import run_pipeline

    servers = _start(3)
    try:
        config = write_config(
            role_lms([s.base_url for s in servers]),  # type: ignore[arg-type]
            sample=SEEDS,
            cache={"dir": str(where / "cache")},
            run={"concurrency": 8},
        )
        cfg = load_config(config, environ={})
        with ThreadPoolExecutor(1) as pool:
            run = pool.submit(run_pipeline, cfg, where / "out", embedder=hashing_embedder)
            if kill_after is not None:
                deadline = time.monotonic() + 120
                while servers[2].request_count < kill_after and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert not run.done(), "the run ended before the replica could be killed"
                servers[2].stop()
            result = run.result(timeout=300)
        assert result.published, result.message
    finally:
        for server in servers:
            server.stop()
    return result.summary, [(s.base_url, s.request_count) for s in servers]


def _dialogues(out: Path) -> list[tuple]:
    rows = pl.read_parquet(out / "dataset.parquet").sort("seed_id", "scenario")
    return [(r["seed_id"], r["scenario"], json.dumps(r["turns"])) for r in rows.to_dicts()]


def _by_replica(summary: dict) -> dict[str, dict[str, int]]:
    """Each replica's counts, summed over the roles."""
    out: dict[str, dict[str, int]] = {}
    for role in summary["lm"]["by_role"].values():
        for base, r in role.get("replicas", {}).items():
            row = out.setdefault(base, {"calls": 0, "failures": 0, "ejections": 0})
            for key in row:
                row[key] += r[key]
            assert r["p50_latency_s"] is None or r["p50_latency_s"] > 0
    return out


def test_a_replica_killed_mid_run_costs_no_dialogue_and_at_most_five_percent_more_requests(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    clean, clean_servers = _run_killing(write_config, tmp_path / "clean", None)
    killed, killed_servers = _run_killing(write_config, tmp_path / "killed", kill_after=12)

    for summary in (clean, killed):
        assert sum(summary["dialogues"].values()) == SEEDS
        assert summary["quality"]["failed"] == 0 and not summary["breaker"]["tripped"]
    counts = [n for _, n in clean_servers]
    assert min(counts) > 0.6 * max(counts), counts  # balanced over the three
    # what the models said is the same: no call lost, none answered twice
    assert _dialogues(tmp_path / "killed" / "out") == _dialogues(tmp_path / "clean" / "out")
    assert killed["lm"]["calls"] == clean["lm"]["calls"]

    clean_rows, killed_rows = _by_replica(clean), _by_replica(killed)
    assert sum(r["calls"] for r in clean_rows.values()) == clean["lm"]["calls"] == sum(counts)
    sent = sum(r["calls"] for r in killed_rows.values())
    assert sent <= 1.05 * clean["lm"]["calls"], (sent, clean["lm"]["calls"])
    dead, dead_requests = killed_servers[2]
    assert killed_rows[dead]["ejections"] >= 1 and killed_rows[dead]["failures"] >= 1
    assert all(killed_rows[base]["ejections"] == 0 for base, _ in killed_servers[:2])
    assert dead_requests < min(n for _, n in killed_servers[:2])  # out, and it stayed out
    report = (tmp_path / "killed" / "out" / "report.md").read_text()
    assert "### Replicas" in report and f"`{dead}`" in report


def test_lm_check_checks_every_replica_and_names_the_dead_one(
    write_config: Callable[..., Path],
) -> None:
    alive = _start(2)
    dead = FakeLLMServer().start()
    dead_url = dead.base_url
    dead.stop()
    try:
        urls = [alive[0].base_url, dead_url, alive[1].base_url]
        config = write_config(role_lms(urls))  # type: ignore[arg-type]
        proc = run_cli("lm", "check", "--config", str(config), timeout=120)
    finally:
        for server in alive:
            server.stop()
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(lines) == 4 * 3  # every role, every replica
    for line in lines:
        assert ("FAILED" in line) == (dead_url in line), line
    assert all(s.request_count == 4 for s in alive)


def test_a_run_whose_replicas_are_all_dead_stops_with_one_line_naming_them(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    gone = _start(2)
    urls = [s.base_url for s in gone]
    for server in gone:
        server.stop()
    config = write_config(
        role_lms(urls),  # type: ignore[arg-type]
        sample=12,
        run={"concurrency": 2, "breaker_failures": 3},
        scenarios={"proportions": {"error_correction": 1}},  # no retriever to load
    )
    proc = run_cli("run", "--config", str(config), "--out", str(tmp_path / "out"), timeout=300)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    stopped = [line for line in proc.stderr.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and "all 2 replicas are out of rotation" in stopped[0], proc.stderr
    summary = json.loads((latest_attempt(tmp_path / "out") / "summary.json").read_text())
    assert summary["breaker"]["tripped"]


def test_replicas_do_not_enter_a_cache_key(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Dialogues made on two replicas are answered from the cache for a third server."""
    from conftest import hashing_embedder
    from flows.core.config import load_config
    from flows.runs.pipeline import run_pipeline

    def run(urls: list[str] | str, out: str) -> None:
        config = write_config(
            role_lms(urls),  # type: ignore[arg-type]
            sample=6,
            cache={"dir": str(tmp_path / "cache"), "replay_runs": False},
        )
        run_pipeline(load_config(config, environ={}), tmp_path / out, embedder=hashing_embedder)

    first = _start(2)
    try:
        run([s.base_url for s in first], "a")
        assert all(s.request_count > 0 for s in first)
    finally:
        for server in first:
            server.stop()
    with FakeLLMServer() as other:
        run(other.base_url, "b")
        assert other.request_count == 0
