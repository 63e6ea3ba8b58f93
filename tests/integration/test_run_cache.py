"""The run cache: an unchanged rerun restores the stored outputs, anything else recomputes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml

import flows.ingest.seeds
import flows.runs.run_cache
import flows.runs.stages
from conftest import PROJECT, role_lms, run_cli
from fake_llm import FakeLLMServer
from flows.core.config import load_config
from flows.runs.pipeline import run_pipeline

FILES = ("dataset.parquet", "dataset.jsonl", "messages.jsonl", "rejects.parquet", "README.md")


def _run(config: Path, embedder, out: Path, **env: str) -> dict:
    environ = {f"MASTER__{k}": v for k, v in env.items()}
    return run_pipeline(load_config(config, environ=environ), out, embedder=embedder).summary


def _seeds_file(tmp_path: Path, rows: int = 6) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {"question": f"What is {i} plus {i + 3} apples?", "answer": f"#### {2 * i + 3}"}
            )
            + "\n"
            for i in range(rows)
        )
    )
    return path


@pytest.fixture
def config(fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path) -> Path:
    path = write_config(role_lms(fake_llm.base_url), sample=6)
    # the seeds as one local file the test can edit (the bundled ones are read-only)
    data = yaml.safe_load(path.read_text())
    data["seeds"] = {"sources": [{"path": str(_seeds_file(tmp_path)), "domain": "math"}]}
    path.write_text(yaml.safe_dump(data))
    return path


def _bytes(out: Path) -> dict[str, bytes]:
    """The outputs' bytes; the card's version id (`Version `...`. `), which names each run's
    own version, left out."""
    files = [out / name for name in FILES] + sorted((out / "hf").rglob("*"))
    found = {str(f.relative_to(out)): f.read_bytes() for f in files if f.is_file()}
    found["README.md"] = re.sub(rb"Version `[^`]+`\. ", b"", found["README.md"])
    return found


def test_an_unchanged_rerun_restores_the_outputs_without_loading_anything(
    config: Path, fake_llm: FakeLLMServer, embedder, tmp_path: Path, monkeypatch
) -> None:
    prewarmed: list[object] = []  # the publish imports' head start: only for a simulation
    prewarm = flows.runs.stages.prewarm
    monkeypatch.setattr(
        flows.runs.stages, "prewarm", lambda: prewarmed.append(prewarm()) or prewarmed[-1]
    )
    first = _run(config, embedder, tmp_path / "first")
    assert first["run_cache"] == "stored" and first["lm"]["calls"] > 0
    assert len(prewarmed) == 1
    fake_llm.reset()

    def no_loading(*args, **kwargs):
        raise AssertionError("a replay loads no seeds")

    monkeypatch.setattr(flows.ingest.seeds, "load_seeds", no_loading)
    again = _run(config, embedder, tmp_path / "again")
    assert len(prewarmed) == 1
    assert again["run_cache"] == "hit" and fake_llm.request_count == 0
    assert again["lm"]["calls"] == 0 and again["lm"]["cache_hits"] == first["lm"]["calls"]
    assert again["dialogues"] == first["dialogues"] and again["quality"] == first["quality"]
    assert _bytes(tmp_path / "again") == _bytes(tmp_path / "first")
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["run_cache"] == "hit"
    report = (tmp_path / "again" / "report.md").read_text()
    assert "| **all** | 0 |" in report and "### error_correction" in report


def test_an_edited_seed_misses_and_only_its_dialogue_is_generated(
    config: Path, fake_llm: FakeLLMServer, embedder, tmp_path: Path
) -> None:
    first = _run(config, embedder, tmp_path / "first")
    seeds = tmp_path / "seeds.jsonl"
    lines = seeds.read_text().splitlines()
    row = json.loads(lines[0])
    lines[0] = json.dumps({**row, "answer": row["answer"].replace("#### ", "#### 1")})
    seeds.write_text("\n".join(lines) + "\n")
    fake_llm.reset()
    second = _run(config, embedder, tmp_path / "second")
    assert second["run_cache"] == "stored"
    assert 0 < fake_llm.request_count < first["lm"]["calls"]
    assert second["lm"]["calls"] == fake_llm.request_count


def test_a_stored_file_edited_in_place_is_never_replayed(
    config: Path, fake_llm: FakeLLMServer, embedder, tmp_path: Path
) -> None:
    _run(config, embedder, tmp_path / "first")
    clean = _bytes(tmp_path / "first")
    with (tmp_path / "first" / "dataset.jsonl").open("a") as fh:  # the stored file's inode
        fh.write('{"conversations": "tampered"}\n')
    fake_llm.reset()
    again = _run(config, embedder, tmp_path / "again")
    assert again["run_cache"] == "stored" and fake_llm.request_count == 0  # dialogue cache
    assert _bytes(tmp_path / "again") == clean


def test_a_run_left_unfinished_is_not_stored(
    config: Path, fake_llm: FakeLLMServer, embedder, tmp_path: Path
) -> None:
    stopped = _run(config, embedder, tmp_path / "stopped", RUN__BUDGET__MAX_CALLS="3")
    assert stopped["budget"]["stopped"] and stopped["run_cache"] == "unsettled"
    assert not list((tmp_path / "cache" / "runs").glob("[0-9a-f]*"))
    finished = _run(config, embedder, tmp_path / "finished")
    assert finished["run_cache"] == "stored" and finished["lm"]["calls"] > 0


def test_a_staging_folder_left_by_a_killed_run_is_cleared(
    config: Path, fake_llm: FakeLLMServer, embedder, tmp_path: Path
) -> None:
    runs = tmp_path / "cache" / "runs"
    left = runs / ".staging.killed"
    (left / "hf").mkdir(parents=True)
    (left / "dataset.jsonl").write_text("half written")
    os.utime(left, (0, 0))
    fresh = runs / ".staging.live"  # a run storing right now
    fresh.mkdir()
    assert _run(config, embedder, tmp_path / "out")["run_cache"] == "stored"
    assert not left.exists() and fresh.exists()
    assert len(list(runs.glob("[0-9a-f]*"))) == 1


def test_other_code_or_a_smaller_keep_prunes_and_misses(
    config: Path, fake_llm: FakeLLMServer, embedder, tmp_path: Path, monkeypatch
) -> None:
    _run(config, embedder, tmp_path / "a", CACHE__KEEP_RUNS="1")
    real = flows.runs.run_cache.source_fingerprint
    monkeypatch.setattr(
        flows.runs.run_cache, "source_fingerprint", lambda *names: "other" + real(*names)
    )
    other = _run(config, embedder, tmp_path / "b", CACHE__KEEP_RUNS="1")
    assert other["run_cache"] == "stored"  # new code: recomputed (from the dialogue cache)
    assert len(list((tmp_path / "cache" / "runs").glob("[0-9a-f]*"))) == 1
    assert pl.read_parquet(tmp_path / "b" / "dataset.parquet").equals(
        pl.read_parquet(tmp_path / "a" / "dataset.parquet")
    )


#: what a replayed `master run` never imports (start-up time, benchmarks/RESULTS.md)
UNNEEDED_ON_REPLAY = (
    "dspy",
    "datasets",
    "matplotlib",
    "torch",
    "sentence_transformers",
    "polars",
    "pandas",
    "pyarrow",  # a replay publishes the same rows again: its changes read no row
    "flows.optimization",
    "flows.ingest.seeds",
    "flows.runs.shards",
    "modules.lm.pool",  # and with it asyncio: the replica counts are read only after calls
)
REPLAY_PROBE = """
import json, sys
from flows.cli import main
code = main(["run", "--config", sys.argv[1]])
print(json.dumps({"code": code, "loaded": [m for m in sys.argv[2:] if m in sys.modules]}))
"""


def test_a_replayed_master_run_imports_neither_dspy_nor_the_stages(
    config: Path, fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    data = yaml.safe_load(config.read_text())
    data["scenarios"] = {"proportions": {"error_correction": 1, "debate": 0, "analogy": 0}}
    config.write_text(yaml.safe_dump(data))
    first = run_cli("run", "--config", str(config))
    assert first.returncode == 0, first.stderr[-3000:]
    fake_llm.reset()
    again = subprocess.run(
        [sys.executable, "-c", REPLAY_PROBE, str(config), *UNNEEDED_ON_REPLAY],
        capture_output=True, text=True, cwd=PROJECT, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    found = json.loads(again.stdout.strip().splitlines()[-1])
    assert found == {"code": 0, "loaded": []}
    assert fake_llm.request_count == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["run_cache"] == "hit"


def test_saved_program_versions_enter_the_key_by_their_files(tmp_path: Path) -> None:
    from flows.simulation.saved_programs import version_prints

    saved = tmp_path / "debate" / "v1.json"
    saved.parent.mkdir()
    saved.write_text('{"a": 1}')
    versions = {"debate": "v1", "analogy": "baseline"}
    first = version_prints(versions, str(tmp_path))
    assert first is not None and first["analogy"] == "baseline"
    saved.write_text('{"a": 2}')  # the same name, other demos: another key
    assert version_prints(versions, str(tmp_path)) != first
    saved.unlink()  # missing: the driver builds the programs, which names the file
    assert version_prints(versions, str(tmp_path)) is None
