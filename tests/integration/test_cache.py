"""Content-addressed caching, checked by counting the fake server's requests."""

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
import pytest

import modules.scenarios.debate
import modules.scenarios.error_correction
from conftest import PROJECT, finished_calls, role_lms, run_cli, wait_for_finished_calls
from fake_llm import FakeLLMServer
from flows.core.config import load_config
from flows.runs.pipeline import run_pipeline
from signatures import TeacherCritique


def _run(config: Path, embedder, out: Path, **env: str):
    environ = {f"MASTER__{k}": v for k, v in env.items()}
    return run_pipeline(load_config(config, environ=environ), out, embedder=embedder)


def _by_model(server: FakeLLMServer) -> dict[str, int]:
    return {k.removesuffix("-model"): v for k, v in server.count_by_model().items()}


@pytest.fixture
def first_run(fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder, tmp_path):
    config = write_config(role_lms(fake_llm.base_url), sample=6)  # two of each scenario
    result = _run(config, embedder, tmp_path / "first")
    fake_llm.reset()
    return config, result.summary


def test_changing_the_teacher_instructions_reruns_only_teacher_and_later_turns(
    first_run, fake_llm: FakeLLMServer, embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, summary = first_run
    changed = TeacherCritique.with_instructions(TeacherCritique.instructions + " Be encouraging.")
    monkeypatch.setattr(modules.scenarios.error_correction, "TeacherCritique", changed)
    # a patch in memory is not an edit of signatures/ (which the run key fingerprints), so
    # the run cache is bypassed: this is about the call cache
    second = _run(config, embedder, tmp_path / "second", CACHE__REPLAY_RUNS="false").summary
    n_ec = summary["dialogues"]["error_correction"]
    assert n_ec > 0
    # the weak student's turn comes first and is reused; teacher and revision are re-run
    assert _by_model(fake_llm) == {"strong": 2 * n_ec}
    assert second["lm"]["by_role"]["weak"]["cache_hits"] == n_ec
    assert second["lm"]["by_role"]["peer"]["calls"] == 0


def test_changing_one_roles_temperature_reruns_only_its_dialogues(
    first_run, fake_llm: FakeLLMServer, embedder, tmp_path: Path
) -> None:
    config, summary = first_run
    _run(config, embedder, tmp_path / "second", LMS__PEER__TEMPERATURE="0.9")
    n_debate = summary["dialogues"]["debate"]
    peer_calls = summary["lm"]["by_role"]["peer"]["calls"]
    assert n_debate > 0
    # every debater call is re-run, then student C (its prompt holds the new debate)
    assert _by_model(fake_llm) == {"peer": peer_calls, "strong": n_debate}


def test_changing_a_model_reruns_only_that_role(
    first_run, fake_llm: FakeLLMServer, embedder, tmp_path: Path
) -> None:
    config, summary = first_run
    _run(config, embedder, tmp_path / "second", LMS__WEAK__MODEL="openai/weak2-model")
    n_ec = summary["dialogues"]["error_correction"]
    assert _by_model(fake_llm) == {"weak2": n_ec, "strong": 2 * n_ec}


def test_adding_and_editing_seeds_runs_only_their_dialogues(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder, tmp_path: Path
) -> None:
    import json

    from conftest import BUNDLED

    rows = [json.loads(x) for x in (BUNDLED / "gsm8k_train_sample.jsonl").read_text().splitlines()]
    seeds = tmp_path / "math.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    sources = [{"path": str(seeds), "domain": "math", "name": "math"}]
    config = write_config(role_lms(fake_llm.base_url), sample=None)
    import yaml

    data = yaml.safe_load(config.read_text())
    data["seeds"] = {"sources": sources, "dedupe": {"near": False}}
    config.write_text(yaml.safe_dump(data))
    first = _run(config, embedder, tmp_path / "a").summary
    assert sum(first["dialogues"].values()) == 20
    fake_llm.reset()

    edited = dict(rows[3], answer=rows[3]["answer"] + " (checked)")
    new_rows = rows[:3] + [edited] + rows[4:20] + rows[20:22]
    seeds.write_text("".join(json.dumps(r) + "\n" for r in new_rows))
    second = _run(config, embedder, tmp_path / "b").summary
    assert sum(second["dialogues"].values()) == 22
    changed_calls = second["lm"]["calls"]
    assert changed_calls == fake_llm.request_count > 0
    per_dialogue = first["lm"]["calls"] / 20
    assert changed_calls <= 3 * per_dialogue * 2  # three dialogues' worth, never the whole set
    assert second["lm"]["cache_hits"] >= first["lm"]["calls"] - 2 * per_dialogue * 2


def _cli_run(config: Path, out: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--out", str(out)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,
    )


def test_a_killed_run_resumes_with_only_the_unfinished_calls(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    with FakeLLMServer(latency=0.05) as server:
        config = write_config(role_lms(server.base_url), sample=9, run={"concurrency": 2})
        proc = _cli_run(config, tmp_path / "out")
        committed = wait_for_finished_calls(tmp_path / "cache", 4, timeout=180)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert committed
        finished = finished_calls(tmp_path / "cache")
        assert not (tmp_path / "out" / "summary.json").exists()
        server.reset()
        proc = _cli_run(config, tmp_path / "out")
        assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
        resumed = server.request_count

        server.reset()
        fresh_config = tmp_path / "fresh.yaml"
        fresh_config.write_text(
            config.read_text().replace(str(tmp_path / "cache"), str(tmp_path / "cache2"))
        )
        proc = _cli_run(fresh_config, tmp_path / "fresh")
        assert proc.wait(timeout=300) == 0
        total = server.request_count
    assert 0 < finished < total
    assert resumed == total - finished
    for name in ("dataset.jsonl", "messages.jsonl"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()


def test_two_runs_at_once_on_one_cache_both_finish(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    with FakeLLMServer(latency=0.02) as server:
        config = write_config(role_lms(server.base_url), sample=9)
        procs = [_cli_run(config, tmp_path / f"out{i}") for i in range(2)]
        deadline = time.monotonic() + 300
        codes = [p.wait(timeout=max(1, deadline - time.monotonic())) for p in procs]
    assert codes == [0, 0], [p.stderr.read() for p in procs if p.stderr]
    assert (tmp_path / "out0" / "dataset.jsonl").read_bytes() == (
        tmp_path / "out1" / "dataset.jsonl"
    ).read_bytes()


def test_a_budget_caps_the_calls_and_keeps_every_finished_dialogue(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(role_lms(fake_llm.base_url), sample=6, run={"concurrency": 2})
    out = tmp_path / "out"
    proc = run_cli("run", "--config", str(config), "--out", str(out), "--max-calls", "10")
    assert proc.returncode == 0, proc.stderr
    assert fake_llm.request_count <= 10
    assert "stopped early" in proc.stderr and "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"]["stopped"] and summary["budget"]["unfinished"] > 0
    published = (out / "dataset.jsonl").read_text().splitlines()
    assert len(published) == sum(summary["dialogues"].values()) > 0
    unfinished = pl.read_parquet(out / "rejects.parquet").filter(pl.col("stage") == "budget")
    assert unfinished.height == summary["budget"]["unfinished"]
    assert len(published) + unfinished.height == 6
    # the next run without a cap makes only the calls that were not made
    capped = fake_llm.request_count
    proc = run_cli("run", "--config", str(config), "--out", str(tmp_path / "rest"))
    assert proc.returncode == 0, proc.stderr
    with FakeLLMServer() as fresh:
        text = config.read_text().replace(fake_llm.base_url, fresh.base_url)
        fresh_config = tmp_path / "fresh.yaml"
        fresh_config.write_text(text.replace(str(tmp_path / "cache"), str(tmp_path / "c2")))
        assert run_cli("run", "--config", str(fresh_config), "--out",
                       str(tmp_path / "fresh")).returncode == 0  # fmt: skip
        total = fresh.request_count
    assert fake_llm.request_count == total
    assert capped < total


def test_ctrl_c_keeps_finished_calls_and_the_rerun_makes_only_the_rest(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    with FakeLLMServer(latency=0.05) as server:
        config = write_config(role_lms(server.base_url), sample=9, run={"concurrency": 2})
        proc = _cli_run(config, tmp_path / "out")
        assert server.wait_for_requests(8, timeout=180)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert "finished LM calls are kept" in (proc.stderr.read() if proc.stderr else "")
        with pytest.raises(ProcessLookupError):  # no worker outlives the run
            os.killpg(proc.pid, 0)
        finished = finished_calls(tmp_path / "cache")
        server.reset()
        proc = _cli_run(config, tmp_path / "out")
        assert proc.wait(timeout=300) == 0
        resumed = server.request_count
        server.reset()
        fresh_config = tmp_path / "fresh.yaml"
        fresh_config.write_text(
            config.read_text().replace(str(tmp_path / "cache"), str(tmp_path / "cache2"))
        )
        assert _cli_run(fresh_config, tmp_path / "fresh").wait(timeout=300) == 0
        total = server.request_count
    assert 0 < finished < total and resumed == total - finished


def test_a_second_run_on_the_same_output_folder_refuses_at_once(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    with FakeLLMServer(latency=1.5) as server:  # slow enough to outlast the second's start
        config = write_config(role_lms(server.base_url), sample=3, run={"concurrency": 1})
        first = _cli_run(config, tmp_path / "out")
        assert server.wait_for_requests(2, timeout=180)
        second = run_cli("run", "--config", str(config), "--out", str(tmp_path / "out"))
        assert first.poll() is None  # the second refused while the first was still running
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert "another run is writing this output folder (pid" in second.stderr
        assert first.wait(timeout=300) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert sum(summary["dialogues"].values()) == 3
    assert pl.read_parquet(tmp_path / "out" / "dataset.parquet").height == 3


def test_cache_writes_do_not_fault_zlib_state_in_on_every_call() -> None:
    """diskcache's JSONDisk compresses every key and value; importing `modules` raises glibc's
    trim threshold so zlib's ~256 KB of state is not faulted in again on every call."""
    import os
    import resource
    import zlib

    import modules  # noqa: F401 - sets the threshold
    from modules.runtime import keep_heap_top

    if not hasattr(os, "confstr") or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        pytest.skip("glibc tuning not in effect")
    try:
        os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        pytest.skip("not glibc")
    assert keep_heap_top() is False  # already done once, at import
    key = b'"' + b"a" * 64 + b'"'
    zlib.compress(key, 1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(500):
        zlib.compress(key, 1)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 500


def _judged(write_config: Callable[..., Path], base_url: str, judge_url: str | None = None):
    lms = role_lms(base_url)
    if judge_url is not None:
        lms["judge"] = {**lms["judge"], "api_base": judge_url}
    return write_config(lms, sample=6, quality={"judge": True, "hard": []})


def test_a_rerun_reads_the_verdicts_instead_of_checking_and_judging_again(
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flows.quality.verification

    config = _judged(write_config, fake_llm.base_url)
    first = _run(config, embedder, tmp_path / "first").summary
    checked: list[str] = []
    real_checks = flows.quality.verification._checks

    def counting(item, q):
        checked.append(item.key)
        return real_checks(item, q)

    monkeypatch.setattr(flows.quality.verification, "_checks", counting)
    fake_llm.reset()
    # (not a replay of the whole run, which would skip verification for another reason)
    again = _run(config, embedder, tmp_path / "again", CACHE__REPLAY_RUNS="false").summary
    assert again["run_cache"] == "off"
    assert checked == [] and fake_llm.request_count == 0
    assert again["quality"] == first["quality"]
    assert again["lm"]["by_role"]["judge"]["cache_hits"] == first["lm"]["by_role"]["judge"]["calls"]
    assert pl.read_parquet(tmp_path / "again" / "dataset.parquet").equals(
        pl.read_parquet(tmp_path / "first" / "dataset.parquet")
    )
    # another quality setting is another verdict: checked again, the judge's call still cached
    stricter = _run(config, embedder, tmp_path / "stricter", QUALITY__JUDGE_MIN_SCORE="5")
    assert len(checked) == sum(first["dialogues"].values()) and fake_llm.request_count == 0
    assert stricter.summary["lm"]["calls"] == 0


def test_a_verdict_the_judge_could_not_reach_is_not_kept(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder, tmp_path: Path
) -> None:
    with FakeLLMServer(status_override=400) as broken:
        first = _run(_judged(write_config, fake_llm.base_url, broken.base_url), embedder,
                     tmp_path / "first").summary  # fmt: skip
    assert first["lm"]["by_role"]["judge"]["calls"] == 0
    rows = pl.read_parquet(tmp_path / "first" / "dataset.parquet")
    reasons = [q["checks"]["judge"]["reason"] for q in rows["quality"].to_list()]
    assert reasons and all("the judge could not answer" in r for r in reasons)
    fake_llm.reset()
    second = _run(_judged(write_config, fake_llm.base_url), embedder, tmp_path / "second").summary
    dialogues = sum(second["dialogues"].values())
    assert fake_llm.count_by_model() == {"judge-model": dialogues} and dialogues > 0


def test_writes_on_a_loop_are_read_at_once_committed_together_and_kept_by_close(
    tmp_path: Path,
) -> None:
    """GroupCommit: one transaction per batch, reads see pending writes, close() commits, and
    a dialogue batch commits its calls first (so a dialogue on disk has its calls on disk)."""
    import asyncio

    import diskcache

    from flows.simulation.dialogue_cache import DialogueStore
    from modules.lm.call_cache import CallStore

    def on_disk(path: Path) -> set[str]:
        with diskcache.Cache(str(path), disk=diskcache.JSONDisk) as cache:
            return {str(k) for k in cache.iterkeys()}

    calls = CallStore(tmp_path / "cache")
    dialogues = DialogueStore(tmp_path / "cache", calls)
    value = {"response": {"text": "hi"}, "role": "weak"}

    async def write() -> tuple[set[str], set[str]]:
        calls.put("call-1", value)
        dialogues.put("dialogue-1", [{"text": "hi"}], [], "v1")
        pending = on_disk(tmp_path / "cache"), on_disk(tmp_path / "cache" / "dialogues")
        assert calls.get("call-1") is not None and dialogues.get("dialogue-1") is not None
        await asyncio.sleep(calls.writes.delay * 3)  # the timer commits both batches
        return pending

    pending = asyncio.run(write())
    assert pending == (set(), set())  # nothing committed while the batch was open
    assert on_disk(tmp_path / "cache") == {"call-1"}
    assert on_disk(tmp_path / "cache" / "dialogues") == {"dialogue-1"}

    async def later() -> None:
        calls.put("call-2", value)
        dialogues.put("dialogue-2", [{"text": "hi"}], [], "v1")

    asyncio.run(later())
    dialogues.writes.flush()  # a dialogue batch: its call store first
    assert "call-2" in on_disk(tmp_path / "cache")
    calls.put("call-3", value)  # outside a loop: committed before put returns
    assert "call-3" in on_disk(tmp_path / "cache")

    async def unflushed() -> None:
        calls.put("call-4", value)

    asyncio.run(unflushed())
    calls.close()
    dialogues.close()
    assert "call-4" in on_disk(tmp_path / "cache")
    reopened = CallStore(tmp_path / "cache")
    assert reopened.get("call-4") == calls_value_sealed("call-4", value)
    reopened.close()


def test_writes_piling_up_on_the_loop_are_committed_by_the_loop(tmp_path: Path) -> None:
    """The writer thread can fall behind a loop that holds the GIL: at `limit` pending writes
    the loop commits them itself, so neither memory nor what a kill loses grows with a run."""
    import asyncio

    import diskcache

    from modules.lm.call_cache import CallStore

    calls = CallStore(tmp_path / "cache")
    calls.writes.limit, calls.writes.delay = 3, 60.0  # the timer never fires in this test
    value = {"response": {"text": "hi"}, "role": "weak"}

    async def write(n: int) -> None:
        for i in range(n):
            calls.put(f"call-{i}", value)

    def on_disk() -> int:
        with diskcache.Cache(str(tmp_path / "cache"), disk=diskcache.JSONDisk) as cache:
            return len(cache)

    asyncio.run(write(2))
    assert on_disk() == 0 and len(calls.writes.pending) == 2  # below the limit: pending
    asyncio.run(write(7))
    assert on_disk() == 6 and len(calls.writes.pending) == 1  # committed at 3 pending, twice
    calls.close()
    assert on_disk() == 7


def calls_value_sealed(key: str, value: dict) -> dict:
    from modules.cache.disks import seal

    return {**value, "check": seal(key, value["response"])}
