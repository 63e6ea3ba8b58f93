"""LLM faults through the whole pipeline: rate limits, server errors, resets, malformed bodies,
cut-off answers. Transient ones are retried; what still fails is listed with its reason in
summary.json and completed by the next run; finished dialogues are never lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import latest_attempt, role_lms, run_cli
from fake_llm import FakeLLMServer


def _run(config: Path, out: Path, code: int = 0) -> dict:
    """The run's summary.json: the published one, or with a non-zero `code` the newest
    attempt's (a run that fails its gates is set aside)."""
    proc = run_cli("run", "--config", str(config), "--out", str(out))
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads((latest_attempt(out) if code else out).joinpath("summary.json").read_text())


def test_transient_faults_are_retried_and_every_dialogue_completes(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    # each fault followed by a success, so no single call meets more than its retries allow
    faults = [x for f in ("429", "500", "502", "503", "reset", "429", "500") for x in (f, "ok")]
    with FakeLLMServer(script=faults, retry_after=0.2) as server:
        config = write_config(role_lms(server.base_url), sample=6, run={"concurrency": 2})
        summary = _run(config, tmp_path / "out")
        outcomes = server.outcomes
    assert sum(summary["dialogues"].values()) == 6 and summary["quality"]["failed"] == 0
    assert {"429", "500", "502", "503", "reset"} <= set(outcomes)


def test_what_still_fails_is_listed_and_the_next_run_completes_it(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    with FakeLLMServer(status_override=503) as down:
        config = write_config(role_lms(down.base_url), sample=6, run={"concurrency": 2})
        first = _run(config, tmp_path / "out", code=4)  # every seed failed: not published
    assert sum(first["dialogues"].values()) == 0 and first["quality"]["failed"] == 6
    assert not (tmp_path / "out" / "summary.json").exists()
    assert first["quality"]["failures"] and all(
        "503" in reason or "Service" in reason or "unavailable" in reason.lower()
        for reason in first["quality"]["failures"]
    ), first["quality"]["failures"]

    with FakeLLMServer(port=int(down.base_url.split(":")[2].split("/")[0])) as up:
        second = _run(config, tmp_path / "out")
        assert up.request_count > 0
    assert sum(second["dialogues"].values()) == 6 and second["quality"]["failed"] == 0


def test_malformed_and_cut_off_answers_are_retried_or_reported(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    with FakeLLMServer(script=["malformed", "length", "malformed", "length"]) as server:
        config = write_config(role_lms(server.base_url), sample=6, run={"concurrency": 1},
                              publish={"gates": {"max_failed_share": None}})  # fmt: skip
        summary = _run(config, tmp_path / "out")
    done = sum(summary["dialogues"].values())
    assert done + summary["quality"]["failed"] == 6
    assert done >= 4  # a fault costs at most the dialogue it hit
    assert summary["quality"]["failed"] == sum(summary["quality"]["failures"].values())


def test_soak_every_seed_ends_as_a_dialogue_or_a_reported_failure(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """A small soak (the 10,000-seed one is `make bench`'s `soak`): 5% HTTP 500, 5% HTTP 429."""
    import polars as pl

    from conftest import SHARED_DATA

    source = {"path": str(SHARED_DATA / "gsm8k" / "train.jsonl"), "domain": "math"}
    with FakeLLMServer(fail_rate_500=0.05, fail_rate_429=0.05, retry_after=0.05, seed=7) as srv:
        config = write_config(
            role_lms(srv.base_url),
            seeds={"sources": [source], "sample": 100, "random_seed": 1},
            run={"concurrency": 32},
        )
        # in-process with the hashing embedder: MiniLM over a 7,473-question pool is not the
        # subject here
        from conftest import hashing_embedder
        from flows.core.config import load_config
        from flows.runs.pipeline import run_pipeline

        cfg = load_config(config, environ={})
        summary = run_pipeline(cfg, tmp_path / "out", embedder=hashing_embedder).summary
        assert {"500", "429"} <= set(srv.outcomes)
    kept = summary["seeds"]["kept"]
    quality = summary["quality"]
    assert kept == 100
    assert quality["accepted"] + quality["rejected"] + quality["failed"] == kept
    rows = pl.read_parquet(tmp_path / "out" / "dataset.parquet")
    assert rows["seed_id"].n_unique() == rows.height == quality["accepted"]
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    after_load = rejects.filter(pl.col("stage").is_in(["simulate", "retrieve", "quality"]))
    assert after_load["seed_id"].n_unique() == after_load.height
    assert set(after_load["seed_id"]).isdisjoint(set(rows["seed_id"]))
    assert after_load.height == quality["rejected"] + quality["failed"]


def test_a_per_role_limit_caps_the_calls_in_flight(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    from conftest import hashing_embedder
    from flows.core.config import load_config
    from flows.runs.pipeline import run_pipeline

    def run(limit: int | None, where: str) -> int:
        with FakeLLMServer(latency=0.05) as server:
            lms = role_lms(server.base_url)
            for role in ("weak", "strong"):
                lms[role]["max_concurrency"] = limit
            config = write_config(
                lms,
                sample=9,
                scenarios={"proportions": {"error_correction": 1}},
                run={"concurrency": 8},
                cache={"dir": str(tmp_path / where)},
            )
            run_pipeline(
                load_config(config, environ={}), tmp_path / where, embedder=hashing_embedder
            )
            return server.max_concurrency

    assert run(None, "free") > 2
    assert run(1, "capped") <= 2  # one weak and one strong call at a time


def test_the_circuit_breaker_stops_a_run_against_a_dead_server(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    import polars as pl

    with FakeLLMServer(status_override=503) as down:
        config = write_config(
            role_lms(down.base_url),
            sample=20,
            run={"concurrency": 2, "breaker_failures": 4},
        )
        proc = run_cli("run", "--config", str(config), "--out", str(tmp_path / "out"))
        attempts = down.request_count
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "dialogues failed in a row" in proc.stderr and "rerun" in proc.stderr
    attempt = latest_attempt(tmp_path / "out")  # not published: set aside
    summary = json.loads((attempt / "summary.json").read_text())
    breaker = summary["breaker"]
    assert breaker["tripped"] and breaker["not_started"] >= 10
    assert summary["quality"]["failed"] + breaker["not_started"] == 20
    assert attempts <= (20 - breaker["not_started"]) * 4  # nothing sent after it tripped
    rejects = pl.read_parquet(attempt / "rejects.parquet")
    assert rejects.filter(pl.col("stage") == "breaker").height == breaker["not_started"]

    port = int(down.base_url.split(":")[2].split("/")[0])
    with FakeLLMServer(port=port):
        summary = _run(config, tmp_path / "out")
    assert sum(summary["dialogues"].values()) == 20 and not summary["breaker"]["tripped"]
