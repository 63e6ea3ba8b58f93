"""A run keeps traces of its finished dialogues, not the dialogues: rows go to a spill file
as each dialogue finishes and are read back, in published order, when the dataset is written."""

from __future__ import annotations

import gc
import json
import pickle
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest

import flows.publish.writers
import flows.runs.pipeline
from conftest import role_lms
from fake_llm import FakeLLMServer
from flows.core.config import MergeConfig, PublishConfig, load_config
from flows.ingest.seeds import load_seeds
from flows.planning.jobs import plan_jobs
from flows.publish.collect import Collected, dataset_row
from flows.publish.merge import PublishedRows, merge_refs, merge_rows
from flows.publish.writers import write_dataset
from flows.runs.pipeline import run_pipeline
from flows.runs.shards import simulate_jobs
from flows.simulation.simulate import Outcome


def _run_collecting(
    config: Path, embedder: Any, spill: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Collected, list[dict[str, Any]], list[weakref.ref[Any]]]:
    """run_jobs, with each outcome's row copied and a weak reference to it kept on the side."""
    rows: list[dict[str, Any]] = []
    refs: list[weakref.ref[Any]] = []
    add = Collected.add

    def watched(self: Collected, outcome: Outcome) -> None:
        if outcome.dialogue is not None:
            if outcome.dialogue.quality.get("accepted", True):
                rows.append(dataset_row(outcome.dialogue, outcome.job.seed))
            refs.append(weakref.ref(outcome.dialogue))
        refs.append(weakref.ref(outcome))
        add(self, outcome)

    monkeypatch.setattr(Collected, "add", watched)
    cfg = load_config(config)
    jobs, _ = plan_jobs(load_seeds(cfg.seeds), cfg, embedder)
    return simulate_jobs(jobs, cfg, spill), rows, refs


def test_no_finished_dialogue_stays_in_memory_and_the_spill_gives_the_same_rows(
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    embedder: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(role_lms(fake_llm.base_url), sample=24)
    collected, rows, refs = _run_collecting(config, embedder, tmp_path / "spill", monkeypatch)
    gc.collect()
    assert len(refs) > 24 and all(ref() is None for ref in refs)  # every outcome let go
    assert collected.outcomes == 24 == sum(collected.accepted.values()) == len(rows)

    seeds = load_seeds(load_config(config).seeds).seeds
    for merge in (MergeConfig(), MergeConfig(mode="mix", originals_per_dialogue=0.5)):
        published, dropped = merge_refs(collected.refs, seeds, merge)
        assert (list(PublishedRows(published)), dropped) == merge_rows(rows, seeds, merge)

    # a Dask shard returns its Collected pickled: the file is closed, the rows still read
    again = pickle.loads(pickle.dumps(collected))
    assert [r["seed_id"] for r in PublishedRows(again.refs)] == [r["seed_id"] for r in rows]


def test_collected_from_two_shards_merge_into_one(
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    embedder: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(role_lms(fake_llm.base_url), sample=12)
    whole, rows, _ = _run_collecting(config, embedder, tmp_path / "one", monkeypatch)
    cfg = load_config(config)
    jobs, _ = plan_jobs(load_seeds(cfg.seeds), cfg, embedder)
    parts = [simulate_jobs(jobs[i::2], cfg, tmp_path / f"part{i}") for i in range(2)]
    parts[0].merge(parts[1])
    merged = parts[0]
    assert merged.outcomes == whole.outcomes and merged.accepted == whole.accepted
    assert merged.versions == whole.versions and merged.settled
    seeds = load_seeds(cfg.seeds).seeds
    one, _ = merge_refs(whole.refs, seeds, MergeConfig())
    two, _ = merge_refs(merged.refs, seeds, MergeConfig())
    assert list(PublishedRows(one)) == list(PublishedRows(two))
    assert {Path(r.where[0]).parent.name for r in two} == {"part0", "part1"}


def _row(i: int, quality: dict[str, Any] | None) -> dict[str, Any]:
    turn = {"speaker": "question", "role": None, "text": f"q{i}", "model": None,
            "temperature": None, "finish_reason": None}  # fmt: skip
    return {
        "seed_id": f"s{i}",
        "source": "x",
        "domain": "math",
        "scenario": "debate",
        "turns": [turn],
        "conversations": [{"from": "human", "value": f"q{i}"}],
        "messages": [{"role": "user", "content": f"q{i}"}],
        "provenance": "{}",
        "quality": quality,
        "question": f"q{i}",
        "reference": "r",
    }


def test_the_dataset_written_a_batch_at_a_time_is_the_one_datasets_makes_of_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches that each see other checks, or none, or only nulls, still give one schema: the
    one `datasets` infers from all rows at once."""
    monkeypatch.setattr(flows.publish.writers, "BATCH", 2)
    rows = [
        _row(0, {"checks": {"a": {"ok": True, "reason": None}}, "accepted": True}),
        _row(1, {"checks": {"a": {"ok": None, "reason": None}}, "accepted": True}),
        _row(2, {"checks": {"b": {"ok": False, "reason": "too short"}}, "turn_flags": ["x"]}),
        _row(3, None),
        _row(4, None),
    ]
    seen: list[str] = []
    write_dataset(tmp_path, rows, PublishConfig(), on_row=lambda r: seen.append(r["seed_id"]))
    written = pq.read_table(tmp_path / "dataset.parquet")
    expected = datasets.Dataset.from_list(rows).data.table
    assert written.schema.remove_metadata() == expected.schema.remove_metadata()
    assert written.to_pylist() == expected.to_pylist()
    assert seen == [f"s{i}" for i in range(5)]
    lines = (tmp_path / "dataset.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed_id"] for line in lines] == seen
    reloaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert reloaded.to_list() == expected.to_pylist()


def test_a_run_removes_its_spill_and_one_a_killed_run_left(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    leftover = out / ".spill-run" / "rows.jsonl"
    leftover.parent.mkdir(parents=True)
    leftover.write_text('{"not": "a row of this run"}\n')
    config = write_config(role_lms(fake_llm.base_url), sample=4)
    summary = run_pipeline(load_config(config), out, embedder=embedder).summary
    assert summary["rows"]["published"] == 4
    assert not list(out.glob(".spill-*")) and not list(out.glob(".hf-cache-*"))


def test_a_retrieval_that_fails_stops_the_run_and_publishes_nothing(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """The analogy retrieval runs beside the other dialogues (flows/planning/jobs.py:Plan):
    a failing embedder stops the run with its own error, and no version is published."""
    config = write_config(role_lms(fake_llm.base_url), sample=18)

    def broken(texts: Any) -> Any:
        raise OSError("embedding model files unreadable")

    with pytest.raises(OSError, match="embedding model files unreadable"):
        run_pipeline(load_config(config), tmp_path / "out", embedder=broken)
    assert not (tmp_path / "out" / "current").exists()
    assert not (tmp_path / "out" / "dataset.parquet").exists()
