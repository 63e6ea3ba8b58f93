"""The augment flow on a Prefect test server: the same outputs as `master run`, plus artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from conftest import role_lms
from fake_llm import FakeLLMServer


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_server(prefect_server: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Prefect test server, and the tests' hashing retriever in place of MiniLM."""
    import flows.planning.minilm
    from conftest import hashing_embedder

    monkeypatch.setattr(flows.planning.minilm, "minilm_embedder", lambda: hashing_embedder)


def test_augment_flow_writes_outputs_and_artifacts(
    flow_server: None,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    from prefect.client.orchestration import get_client

    from flows.augment import augment

    config = write_config(role_lms(fake_llm.base_url), sample=6, run={"shard_size": 2})
    out = tmp_path / "flow-out"
    summary = augment(config_path=str(config), out=str(out))
    assert summary["lm"]["calls"] == fake_llm.request_count > 0
    assert json.loads((out / "summary.json").read_text())["dialogues"] == summary["dialogues"]
    assert sum(summary["dialogues"].values()) == 6 and summary["run_cache"] == "stored"
    # the shards' replica counts come back to the flow: every call, on the one server
    sent = [r["replicas"][fake_llm.base_url]["calls"] for r in summary["lm"]["by_role"].values()
            if "replicas" in r]  # fmt: skip
    assert sum(sent) == fake_llm.request_count
    calls = fake_llm.request_count
    again = augment(config_path=str(config), out=str(tmp_path / "again"))
    assert again["run_cache"] == "hit" and fake_llm.request_count == calls
    assert (tmp_path / "again" / "dataset.jsonl").read_bytes() == (
        out / "dataset.jsonl"
    ).read_bytes()

    async def artifact_keys() -> set[str]:
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts() if a.key}

    import asyncio

    keys = asyncio.run(artifact_keys())
    assert {"augment-report", "augment-lm-calls", "augment-summary"} <= keys
    assert {"augment-plot-counts", "augment-plot-lengths", "augment-plot-checks"} <= keys

    # progress: the artifact ends at 100%, the last log line counts every seed and call
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the logs the run sent, on the server before they are read

    async def progress() -> tuple[list[object], list[str]]:
        async with get_client() as client:
            artifacts = await client.read_artifacts()
            logs = await client.read_logs()
        done = [a.data for a in artifacts if a.key == "augment-progress"]
        return done, [log.message for log in logs]

    done, lines = asyncio.run(progress())
    assert 100.0 in done
    # the pipeline's own lines (the `master` logger) are the flow run's logs: the stages, the
    # last progress line, the version published
    assert any(line.startswith("kept 6 seeds") for line in lines), lines
    assert any(line.startswith(f"seeds 6/6, accepted 6, rejected 0, {calls} LM calls, 0 "
                               "cache hits") for line in lines), lines  # fmt: skip
    assert any(f"published version {summary['version']}" in line for line in lines), lines


def test_a_run_that_fails_its_gates_ends_failed_with_one_line_and_keeps_the_last_version(
    flow_server: None,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    from flows.augment import augment

    config = write_config(role_lms(fake_llm.base_url), sample=6)
    out = tmp_path / "out"
    good = augment(config_path=str(config), out=str(out))
    fake_llm.status_override = 503  # the endpoint fails every call
    state = augment(config_path=str(config), out=str(out), sample=9, return_state=True)
    assert state.is_failed() and "\n" not in state.message
    assert state.message.startswith("not published, ") and good["version"] in state.message
    assert json.loads((out / "summary.json").read_text())["version"] == good["version"]
    forced = augment(config_path=str(config), out=str(out), sample=9, force=True,
                     return_state=True)  # fmt: skip
    assert forced.is_completed()  # not stopped by the breaker: the gates only, overridden
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gates"]["forced"] and summary["previous_version"] == good["version"]


def test_a_tripped_breaker_in_the_flow_stops_the_partner_search(
    flow_server: None,
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The endpoint is down and the partner search would go on for ever: once a shard's
    breaker trips, the flow stops the search and reports the analogy seeds still waiting as
    not started; the run ends Failed with every seed accounted for."""
    import threading
    import time

    import polars as pl

    import flows.planning.retrieval as retrieval
    from conftest import latest_attempt
    from flows.augment import augment
    from flows.core.config import load_config
    from flows.planning.assign import assign_scenario

    closed = threading.Event()

    def endless(*args: object, **kwargs: object) -> Iterator[object]:
        deadline = time.monotonic() + 60  # a test that fails, not one that hangs
        try:
            while time.monotonic() < deadline:  # one more chunk of a huge pool embedded
                time.sleep(0.01)
                yield {}
        except GeneratorExit:
            closed.set()  # stopped by the run
            raise

    monkeypatch.setattr(retrieval, "similar_batches", endless)
    with FakeLLMServer(status_override=503) as down:
        config = write_config(
            role_lms(down.base_url), sample=12, run={"shard_size": 2, "breaker_failures": 1}
        )
        state = augment(config_path=str(config), out=str(tmp_path / "out"), return_state=True)
    assert state.is_failed() and closed.is_set()
    attempt = latest_attempt(tmp_path / "out")
    summary = json.loads((attempt / "summary.json").read_text())
    assert summary["breaker"]["tripped"]
    assert summary["quality"]["failed"] + summary["breaker"]["not_started"] == 12
    rejects = pl.read_parquet(attempt / "rejects.parquet")
    proportions = load_config(config).scenarios.proportions
    owed = rejects.filter(
        pl.col("seed_id").map_elements(
            lambda seed_id: assign_scenario(seed_id, proportions) == "analogy",
            return_dtype=pl.Boolean,
        )
    )
    assert owed.height >= 1 and set(owed["stage"]) == {"breaker"}  # never looked for


def test_the_augment_flow_runs_a_saved_program_version(
    flow_server: None,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    import dspy

    from flows.augment import augment
    from flows.simulation.saved_programs import save_version
    from modules.scenarios.registry import build_programs

    program = build_programs({})["debate"]
    program.student_c.predict.demos = [
        dspy.Example(question="1+1?", reference="2", dialogue="A: 3", summary="It is 2.")
    ]
    version = save_version(program, "debate", {"optimizer": "by hand"}, tmp_path / "programs")
    config = write_config(
        role_lms(fake_llm.base_url),
        sample=6,
        scenarios={"proportions": {"debate": 1}, "programs": {"debate": version}},
        optimize={"programs_dir": str(tmp_path / "programs")},
    )
    out = tmp_path / "flow-out"
    summary = augment(config_path=str(config), out=str(out))
    assert summary["dialogues"]["debate"] == 6
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    import polars as pl

    provenance = [json.loads(p) for p in pl.read_parquet(out / "dataset.parquet")["provenance"]]
    assert {p["program_version"] for p in provenance} == {version}
    assert any("It is 2." in json.dumps(r["messages"]) for r in fake_llm.requests)


def test_the_augment_flow_backfills_to_the_sample_in_shards(
    flow_server: None,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """merge.backfill: resimulate runs its further rounds through the flow's sharded
    simulate stage and tasks, and lands on exactly seeds.sample rows."""
    from conftest import tricky_judge, tricky_seeds
    from flows.augment import augment

    fake_llm.responder = tricky_judge
    seeds = tricky_seeds(tmp_path / "seeds.jsonl", 40)
    config = write_config(
        role_lms(fake_llm.base_url),
        seeds={"sources": [{"path": str(seeds), "domain": "general", "name": "s"}], "sample": 16},
        quality={"judge": True, "hard": ["judge"]},
        merge={"backfill": "resimulate"},
        run={"shard_size": 4},
    )
    summary = augment(config_path=str(config), out=str(tmp_path / "out"))
    assert summary["quality"]["rejected"] > 0 and summary["backfill"]["rounds"] >= 1
    assert summary["rows"]["published"] == 16 and summary["backfill"]["short"] == {}
    lines = (tmp_path / "out" / "dataset.jsonl").read_text().splitlines()
    assert len(lines) == 16


def test_the_flow_runs_its_first_shards_while_analogy_partners_are_still_being_found(
    flow_server: None,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The nightly path (the flow on threads) gets retrieval off the critical path too: the
    partner search waits until the server has had a request, so the run completes only if
    the ready shards went out first."""
    import time

    import flows.planning.retrieval as retrieval
    from flows.augment import augment

    found = retrieval.similar_batches
    requests_before: list[int] = []

    def after_the_first_call(*args: object, **kwargs: object) -> Iterator[object]:
        deadline = time.monotonic() + 60
        while fake_llm.request_count == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        requests_before.append(fake_llm.request_count)
        yield from found(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(retrieval, "similar_batches", after_the_first_call)
    config = write_config(role_lms(fake_llm.base_url), sample=12, run={"shard_size": 2})
    summary = augment(config_path=str(config), out=str(tmp_path / "out"))
    assert requests_before and requests_before[0] > 0
    assert summary["dialogues"]["analogy"] >= 1
    assert sum(summary["dialogues"].values()) == 12 and summary["quality"]["failed"] == 0
