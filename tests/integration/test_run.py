"""The main job end to end against the fake server: outputs, accounting, reruns, secrets."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import datasets
import polars as pl
import pytest

import flows.runs.prewarm
import flows.runs.stages
from conftest import PROJECT, role_lms, run_cli
from fake_llm import FakeLLMServer
from flows.core.config import load_config
from flows.core.formats import alternates
from flows.runs.pipeline import run_pipeline

SUMMARY_KEYS = {"seeds", "dialogues", "quality", "lm", "elapsed_s"}
OUTPUTS = [
    "dataset.parquet",
    "dataset.jsonl",
    "messages.jsonl",
    "rejects.parquet",
    "report.md",
    "summary.json",
]


def _run(config: Path, embedder, out: Path):
    return run_pipeline(load_config(config), out, embedder=embedder)


def test_run_writes_every_output_with_the_documented_summary(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder, tmp_path: Path
) -> None:
    config = write_config(role_lms(fake_llm.base_url), sample=6)
    result = _run(config, embedder, tmp_path / "out")
    out = result.out
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert set(summary["seeds"]) >= {
        "loaded",
        "rejected",
        "exact_duplicates",
        "near_duplicates",
        "contaminated",
        "kept",
    }
    assert set(summary["dialogues"]) == {"error_correction", "debate", "analogy"}
    assert all(n > 0 for n in summary["dialogues"].values())
    assert summary["lm"]["calls"] == fake_llm.request_count > 0
    assert sum(v["calls"] for v in summary["lm"]["by_role"].values()) == summary["lm"]["calls"]
    assert summary["seeds"]["kept"] == 6 == sum(summary["dialogues"].values())

    parquet = datasets.load_dataset("parquet", data_files=str(out / "dataset.parquet"))["train"]
    sharegpt = datasets.load_dataset("json", data_files=str(out / "dataset.jsonl"))["train"]
    assert len(parquet) == len(sharegpt) == 6
    for line in (out / "messages.jsonl").read_text().splitlines():
        assert alternates(json.loads(line)["messages"])
    for conv in sharegpt["conversations"]:
        assert conv[0]["from"] == "human" and conv[-1]["from"] == "gpt"
    report = (out / "report.md").read_text()
    for scenario in ("error_correction", "debate", "analogy"):
        assert f"### {scenario}" in report
    assert pl.read_parquet(out / "rejects.parquet").columns[:2] == ["stage", "reason"]


def test_a_run_whose_publish_prewarm_fails_still_writes_every_output(
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The background imports (flows/runs/prewarm.py) are only a head start: when they fail,
    publish imports what it needs itself and the run is complete."""
    (tmp_path / "prewarm_breaks.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        flows.runs.prewarm, "PUBLISH_IMPORTS", ("prewarm_no_such_module", "prewarm_breaks")
    )
    threads: list = []

    def started(modules=None):
        threads.append(flows.runs.prewarm.prewarm(modules))
        return threads[-1]

    monkeypatch.setattr(flows.runs.stages, "prewarm", started)
    uncaught: list = []
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    result = _run(write_config(role_lms(fake_llm.base_url), sample=6), embedder, tmp_path / "out")
    assert len(threads) == 1
    threads[0].join(30)
    assert uncaught == []
    for name in [*OUTPUTS, "README.md", "plot_counts.png"]:
        assert (result.out / name).is_file(), name
    assert sum(result.summary["dialogues"].values()) == 6


def test_rerun_with_nothing_changed_makes_no_calls_and_writes_the_same_dataset(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder, tmp_path: Path
) -> None:
    config = write_config(role_lms(fake_llm.base_url), sample=6)
    first = _run(config, embedder, tmp_path / "a")
    calls = fake_llm.request_count
    second = _run(config, embedder, tmp_path / "b")
    assert fake_llm.request_count == calls
    assert second.summary["lm"]["calls"] == 0
    assert second.summary["lm"]["cache_hits"] == first.summary["lm"]["calls"]
    assert second.summary["lm"]["tokens_saved"] > 0
    for name in ("dataset.jsonl", "messages.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_failing_endpoint_rejects_dialogues_and_the_run_goes_on(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder, tmp_path: Path
) -> None:
    lms = role_lms(fake_llm.base_url)
    lms["peer"]["api_base"] = "http://127.0.0.1:9/v1"  # closed port: every debate fails
    config = write_config(lms, sample=6)
    result = _run(config, embedder, tmp_path / "out")
    assert not result.published  # 2 of 6 failed: over the gate's 5%
    rejects = pl.read_parquet(result.files / "rejects.parquet")
    failed = rejects.filter(pl.col("stage") == "simulate")
    assert result.summary["dialogues"]["debate"] == 0 and failed.height == 2
    assert result.summary["dialogues"]["error_correction"] == 2
    assert result.summary["quality"]["failed"] == failed.height
    assert result.summary["quality"]["rejected"] == 0  # the filter dropped nothing here
    assert all(r for r in failed["reason"].to_list())


_cli = run_cli


def test_lm_check_ok_against_the_fake_server(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path]
) -> None:
    proc = _cli("lm", "check", "--config", str(write_config(role_lms(fake_llm.base_url))))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["weak", "peer", "strong", "judge"]
    assert all(line.endswith("ok") and fake_llm.base_url in line for line in lines)
    assert fake_llm.request_count == 4


def test_lm_check_names_each_failing_role_and_endpoint(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path]
) -> None:
    lms = role_lms(fake_llm.base_url)
    closed = "http://127.0.0.1:9/v1"
    for role in ("strong", "judge"):
        lms[role]["api_base"] = closed
    proc = _cli("lm", "check", "--config", str(write_config(lms)))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    assert [line.split()[0] for line in failed] == ["strong", "judge"]
    assert all(closed in line for line in failed)


def test_canary_key_never_reaches_any_file_or_log(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    canary = "sk-canary-7f3a9c1e5b2d4f60"
    config = write_config(role_lms(fake_llm.base_url, key_env="MASTER_CANARY_KEY"), sample=6)
    out = tmp_path / "out"
    proc = _cli(
        "run", "--config", str(config), "--out", str(out), "-v", env={"MASTER_CANARY_KEY": canary}
    )
    assert proc.returncode == 0, proc.stderr
    assert fake_llm.request_count > 0
    assert canary not in proc.stdout and canary not in proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent.name == "cache" for p in written)
    for path in written:
        assert canary.encode() not in path.read_bytes(), path


def test_an_unset_key_variable_is_one_clear_line(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(role_lms(fake_llm.base_url, key_env="MASTER_UNSET_KEY_VAR"))
    proc = _cli("run", "--config", str(config), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "environment variable MASTER_UNSET_KEY_VAR is not set" in proc.stderr


PER_DIALOGUE = re.compile(r"dialogue \d+/\d+ ")


def _progress_config(
    write_config: Callable[..., Path], base_url: str, tmp_path: Path, seeds: int
) -> Path:
    """`seeds` distinct math seeds, debate and error correction only (analogy would load
    MiniLM in the child process: seconds of CPU that say nothing about progress)."""
    question = "Ann has {} apples and gets {} more. How many apples does she have now?"
    rows = [{"question": question.format(i, i + 7), "answer": str(2 * i + 7)} for i in range(seeds)]
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return write_config(
        role_lms(base_url),
        sample=seeds,
        # the questions differ by their numbers only: near-duplicates by design
        seeds={"sources": [{"path": str(path), "domain": "math"}], "dedupe": {"near": False}},
        scenarios={"proportions": {"error_correction": 1, "debate": 1, "analogy": 0}},
    )


def test_a_200_seed_run_off_a_terminal_writes_at_most_30_lines(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = _progress_config(write_config, fake_llm.base_url, tmp_path, 200)
    proc = _cli("run", "--config", str(config), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    assert len(lines) <= 30, "\n".join(lines)
    assert not [line for line in lines if PER_DIALOGUE.search(line)]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    final = proc.stderr.splitlines()[-1]  # the last progress line agrees with summary.json
    assert f"seeds 200/200, accepted {summary['quality']['accepted']}, " in final
    assert f", {summary['lm']['calls']} LM calls, {summary['lm']['cache_hits']} cache hits" in final


def test_verbose_logs_a_line_per_dialogue(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = _progress_config(write_config, fake_llm.base_url, tmp_path, 20)
    proc = _cli("run", "--config", str(config), "--out", str(tmp_path / "out"), "-v")
    assert proc.returncode == 0, proc.stderr
    dialogues = [line for line in proc.stderr.splitlines() if PER_DIALOGUE.search(line)]
    assert len(dialogues) == 20 and all(line.endswith(": ok") for line in dialogues)
    assert "dialogue 20/20 " in proc.stderr


def test_on_a_terminal_the_run_draws_one_live_bar(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """stderr on a pseudo-terminal, as in a shell: the bar is drawn and redrawn in place."""
    config = _progress_config(write_config, fake_llm.base_url, tmp_path, 20)
    screen, terminal = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--out",
         str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=terminal, cwd=PROJECT,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "200"},
    )  # fmt: skip
    os.close(terminal)
    drawn = bytearray()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([screen], [], [], 1.0)
        try:
            chunk = os.read(screen, 65536) if ready else b"?"
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        drawn += chunk if ready else b""
    os.close(screen)
    stdout = child.communicate(timeout=60)[0].decode()
    assert child.returncode == 0, drawn.decode(errors="replace")[-3000:]
    text = drawn.decode()
    assert "━" in text and "\x1b[2K" in text  # a bar, redrawn in place
    assert "seeds 20/20, accepted 20, rejected 0, " in text.split("\x1b[2K")[-1]
    assert not PER_DIALOGUE.search(text)
    assert "20 dialogues" in stdout  # the summary, once the bar is done


def test_every_long_step_of_a_run_is_told_and_analogy_jobs_join_as_they_are_matched(
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No silent stage: loading, near-dedupe, embedding, partner matching and publishing
    each move the run's progress (what the CLI shows as a bar or a line every 10 s); the
    analogy seeds join the simulation in batches, after it has begun."""
    import flows.ingest.dedupe
    import flows.ingest.seeds
    import flows.planning.retrieval
    from flows.runs.progress import Figures, Progress

    monkeypatch.setattr(flows.ingest.seeds, "TELL_EVERY", 5)
    monkeypatch.setattr(flows.ingest.dedupe, "TELL_EVERY", 5)
    monkeypatch.setattr(flows.planning.retrieval, "EMBED_CHUNK", 4)
    monkeypatch.setattr(flows.planning.retrieval, "QUERY_BATCH", 2)
    monkeypatch.setattr(flows.runs.stages, "PUBLISH_TELL_EVERY", 3)
    config = write_config(role_lms(fake_llm.base_url), sample=24)
    seen: list[Figures] = []
    progress = Progress(watch=lambda p: seen.append(p.figures()))
    out = tmp_path / "out"
    result = run_pipeline(load_config(config), out, embedder=embedder, progress=progress)
    steps = {name for f in seen for name, _, _ in f.steps}
    assert {"reading gsm8k", "near-dedupe", "embedding the pool", "matching partners"} <= steps
    assert "publishing rows" in steps
    assert seen[-1].steps == ()  # every step over
    totals = sorted({f.total for f in seen if f.total})
    analogy = result.summary["dialogues"]["analogy"]
    assert analogy >= 2 and len(totals) >= 2 and totals[-1] == 24  # the total grew in batches
    assert totals[0] == 24 - analogy
