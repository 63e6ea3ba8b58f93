"""Benchmark runner: `make bench` (or `python benchmarks/run.py --only NAME`).

Writes benchmarks/results.json (every figure, machine and versions) and benchmarks/RESULTS.md
(the same as a table, each figure with the command that reproduces it). Results of benches
not run this time are kept from the previous file.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from modules.runtime import setup  # noqa: E402

setup()
from flows.core.config import load_config  # noqa: E402
from flows.runs.pipeline import run_pipeline  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
RESULTS_JSON = ROOT / "benchmarks" / "results.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"


@contextlib.contextmanager
def fake_server(
    latency: float, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, Callable[[], int]]]:
    """The fake server in its own process, so it never competes with the pipeline for the GIL;
    yields its base URL and a function returning how many chat requests it has served.
    `extra` are more fake_llm.py options (failure rates, Retry-After)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "fake_llm.py"),
            "--port",
            "0",
            "--latency",
            str(latency),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        base_url = (proc.stdout.readline() if proc.stdout else "").strip()
        root = base_url.removesuffix("/v1")

        def served() -> int:
            with urllib.request.urlopen(f"{root}/health", timeout=10) as resp:
                return int(json.loads(resp.read())["requests"])

        yield base_url, served
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _shared_sources() -> list[dict[str, str]]:
    return [
        {"path": str(SHARED / "gsm8k" / "train.jsonl"), "domain": "math", "name": "gsm8k"},
        {
            "path": str(SHARED / "code_alpaca" / "code_alpaca_2k.json"),
            "domain": "code",
            "format": "alpaca",
            "name": "code_alpaca",
        },
        {
            "path": str(SHARED / "self_instruct" / "user_oriented_instructions.jsonl"),
            "domain": "general",
            "format": "self_instruct",
            "name": "self_instruct",
        },
    ]


def _remote_lms(base_url: str) -> dict[str, dict[str, object]]:
    return {
        role: {"model": f"openai/{role}", "api_base": base_url, "temperature": t, "max_tokens": 256}
        for role, t in (("weak", 0.8), ("peer", 0.6), ("strong", 0.2), ("judge", 0.0))
    }


def _environ(cfg: dict) -> dict[str, str]:
    """The config as MASTER__ variables over the default file."""
    env: dict[str, str] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}__{k.upper()}", v)
        else:
            env[prefix] = json.dumps(value) if not isinstance(value, str) else value

    walk("MASTER", cfg)
    return env


def _pipeline_config(tmp: str, base_url: str, seeds: dict, concurrency: int) -> Path:
    import yaml

    cfg_path = Path(tmp) / "config.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "lms": _remote_lms(base_url),
                "seeds": seeds,
                "cache": {"dir": str(Path(tmp) / "cache")},
                "run": {"concurrency": concurrency},
            }
        )
    )
    return cfg_path


def _reject_reasons(out: Path) -> dict[str, int]:
    import polars as pl

    rejects = pl.read_parquet(out / "rejects.parquet")
    # by stage and failed checks (quality) or reason (the rest): a few lines, not one per row
    cause = (
        pl.when(pl.col("stage") == "quality")
        .then(pl.col("checks"))
        .otherwise(pl.col("reason").str.slice(0, 60))
    )
    counted = (
        rejects.group_by(pl.col("stage"), cause.alias("cause")).len().sort("len", descending=True)
    )
    return {f"{row['stage']}: {row['cause']}": row["len"] for row in counted.to_dicts()}


def _timed_run(seeds: int, latency: float, concurrency: int, extra: tuple[str, ...] = ()) -> dict:
    """One pipeline run on the shared sources against a fake server in its own process.

    CPU is this process's (and its children's, reaped before the server is), and the
    simulation's own wall time (the simulate stage: simulate and verify) is timed apart from
    loading, planning and publishing."""
    import resource

    from conftest import hashing_embedder
    from flows.runs.pipeline import drive
    from flows.runs.stages import Stages, simulate_stage

    def children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    simulation: list[float] = []

    def timed_jobs(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return simulate_stage(*args, **kwargs)
        finally:
            simulation.append(time.monotonic() - start)

    with tempfile.TemporaryDirectory() as tmp, fake_server(latency, extra) as (base_url, served):
        sources = {"sources": _shared_sources(), "sample": seeds}
        config = _pipeline_config(tmp, base_url, sources, concurrency)
        cfg = load_config(config, environ={})
        stages = Stages(simulate=timed_jobs)
        cpu0, child0, start = time.process_time(), children(), time.monotonic()
        result = drive(cfg, Path(tmp) / "out", embedder=hashing_embedder, stages=stages)
        wall = time.monotonic() - start
        cpu = time.process_time() - cpu0 + children() - child0
        requests = served()
        reasons = _reject_reasons(result.files)  # published, or set aside by a gate
    return {
        "result": result,
        "wall": wall,
        "simulation": simulation[0],
        "cpu": cpu,
        "requests": requests,
        "reasons": reasons,
    }


def bench_throughput(seeds: int = 2000, latency: float = 0.2, concurrency: int = 64) -> dict:
    """Seeds through the pipeline against the fake server; compared with the ideal time.
    Three runs, the one with the median wall time reported (this machine's noise moves a
    single run by a few seconds); `wall_s_runs` lists all three."""
    runs = sorted(
        (_timed_run(seeds, latency, concurrency) for _ in range(3)),
        key=lambda r: r["wall"],
    )
    run = runs[1]
    result, wall, cpu, calls = run["result"], run["wall"], run["cpu"], run["requests"]
    ideal = calls * latency / concurrency
    dialogues = sum(result.summary["dialogues"].values())
    return {
        "seeds": seeds,
        "dialogues": dialogues,  # accepted; the fake's placeholder answers fail fidelity
        "simulated": dialogues + result.summary["quality"]["rejected"],
        "calls": calls,
        "latency_s": latency,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "wall_s_runs": [round(r["wall"], 2) for r in runs],
        "ideal_s": round(ideal, 2),
        "fraction_of_ideal": round(ideal / wall, 3),
        "simulation_wall_s": round(run["simulation"], 2),
        "simulation_fraction_of_ideal": round(ideal / run["simulation"], 3),
        "fixed_s": round(wall - run["simulation"], 2),  # load, plan, publish
        "cpu_ms_per_call": round(cpu * 1000 / max(calls, 1), 2),
        "seeds_kept": result.summary["seeds"]["kept"],
        "rejects": run["reasons"],
        "command": f"python benchmarks/run.py --only throughput  # {seeds} seeds",
    }


def bench_faults(seeds: int = 2000, latency: float = 0.2, concurrency: int = 64) -> dict:
    """throughput with 2% HTTP 500 and 2% HTTP 429 (Retry-After: 1 s) from the fake server.

    The ideal time counts only the calls the dialogues needed (the ledger's calls), not the
    failed attempts, so every retry and Retry-After wait counts against the pipeline. Every
    dialogue must complete: `simulate_failures` (dialogues lost to an error) must be 0."""
    extra = ("--fail-rate-500", "0.02", "--fail-rate-429", "0.02", "--retry-after", "1")
    run = _timed_run(seeds, latency, concurrency, extra)
    result, wall, cpu = run["result"], run["wall"], run["cpu"]
    calls = result.summary["lm"]["calls"]
    ideal = calls * latency / concurrency
    lost = {k: v for k, v in run["reasons"].items() if k.startswith("simulate")}
    judge_errors = {k: v for k, v in run["reasons"].items() if "Error" in k}
    return {
        "seeds": seeds,
        "fail_rate_500": 0.02,
        "fail_rate_429": 0.02,
        "retry_after_s": 1.0,
        "dialogues": sum(result.summary["dialogues"].values()),
        "calls": calls,
        "requests": run["requests"],
        "failed_attempts": run["requests"] - calls,
        "simulate_failures": sum(lost.values()),
        "errors": judge_errors,
        "latency_s": latency,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "ideal_s": round(ideal, 2),
        "fraction_of_ideal": round(ideal / wall, 3),
        "cpu_ms_per_call": round(cpu * 1000 / max(calls, 1), 2),
        "target": ">= 0.60 of ideal, every dialogue completed",
        "command": f"python benchmarks/run.py --only faults  # {seeds} seeds",
    }


def _child(*args: str) -> dict:
    """Run this script with `args` in a fresh process (its own peak memory and imports) and
    return the figures it prints as JSON on its last line."""
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_growth(seeds: int | None = None) -> dict:
    """Time per seed and peak memory at 1,000 and 10,000 seeds (or only `seeds`), each size in
    a fresh child process (its own peak RSS), against a zero-latency fake server so the figure
    is the pipeline's own CPU. Seeds are varied rows of the shared sets (_variants)."""
    sizes = [seeds] if seeds else [1000, 10_000]
    figures: dict[str, object] = {}
    for n in sizes:
        child = _child("--measure-growth", str(n))
        for key, value in child.items():
            figures[f"{n}_{key}"] = value
    figures["latency_s"] = 0.0
    figures["command"] = "python benchmarks/run.py --only growth" + (
        f"  # {seeds} seeds" if seeds else ""
    )
    return figures


def merge_growth(previous: dict, figures: dict) -> dict:
    """Growth figures of the sizes measured now, beside the previous figures of the others
    (e.g. 100,000, measured with --seeds), with a command that names every size."""
    measured = {k.split("_")[0] for k in figures if k[0].isdigit()}
    kept = {k: v for k, v in previous.items() if k[0].isdigit() and k.split("_")[0] not in measured}
    sizes = sorted({int(k.split("_")[0]) for k in {**kept, **figures} if k[0].isdigit()})
    return {
        **kept,
        **figures,
        "command": "python benchmarks/run.py --only growth  # 1k and 10k; "
        + ", ".join(f"--seeds {n}" for n in sizes if n not in (1000, 10_000)),
    }


def measure_growth(seeds: int) -> int:
    """Child side of growth: one cold run of `seeds` seeds; prints its figures as JSON."""
    import resource

    from conftest import hashing_embedder

    with tempfile.TemporaryDirectory() as tmp, fake_server(0.0) as (base_url, served):
        path = Path(tmp) / "seeds.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in _variants(seeds, seed=3)))
        sources = {"sources": [{"path": str(path), "domain": "math"}]}
        cfg = load_config(_pipeline_config(tmp, base_url, sources, 64), environ={})
        cpu0, start = time.process_time(), time.monotonic()
        result = run_pipeline(cfg, Path(tmp) / "out", embedder=hashing_embedder)
        wall, cpu = time.monotonic() - start, time.process_time() - cpu0
        calls = served()
    figures = {
        "seeds_kept": result.summary["seeds"]["kept"],
        "calls": calls,
        "wall_s": round(wall, 2),
        "wall_ms_per_seed": round(wall * 1000 / seeds, 2),
        "cpu_ms_per_seed": round(cpu * 1000 / seeds, 2),
        "cpu_ms_per_call": round(cpu * 1000 / max(calls, 1), 2),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    print(json.dumps(figures))
    return 0


def bench_baseline(seeds: int = 2000, latency: float = 0.2, concurrency: int = 64) -> dict:
    """The plain asyncio baseline (benchmarks/baseline.py) against the same fake server, and
    the pipeline's throughput (from the last throughput bench) as a fraction of it."""
    import asyncio

    import baseline

    with fake_server(latency) as (base_url, served):
        figures = asyncio.run(baseline.run(base_url, seeds, concurrency))
        figures["served"] = served()
    ideal = figures["calls"] * latency / concurrency
    figures["latency_s"] = latency
    figures["ideal_s"] = round(ideal, 2)
    figures["fraction_of_ideal"] = round(ideal / figures["wall_s"], 3)
    figures["command"] = f"python benchmarks/run.py --only baseline  # {seeds} dialogues"
    return figures


def _pipeline_vs_baseline(results: dict, tag: str | None) -> None:
    """Pipeline calls/s over baseline calls/s, when both benches (same tag) have figures."""
    suffix = f" ({tag})" if tag else ""
    benches = results["benches"]
    base = benches.get(f"baseline{suffix}")
    for name in ("throughput",):
        pipeline = benches.get(f"{name}{suffix}")
        if pipeline and base and base.get("calls_per_s"):
            rate = pipeline["calls"] / pipeline["wall_s"]
            pipeline["calls_per_s"] = round(rate, 2)
            pipeline["fraction_of_baseline"] = round(rate / base["calls_per_s"], 3)


def bench_embedded(seeds: int = 6) -> dict:
    """The embedded SmolLM2 model through the whole pipeline, cold cache."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(environ={"MASTER__CACHE__DIR": str(Path(tmp) / "cache")})
        cfg = cfg.model_copy(update={"seeds": cfg.seeds.model_copy(update={"sample": seeds})})
        start = time.monotonic()
        result = run_pipeline(cfg, Path(tmp) / "out")
        wall = time.monotonic() - start
    lm = result.summary["lm"]
    return {
        "seeds": seeds,
        "calls": lm["calls"],
        "tokens_in": lm["tokens_in"],
        "tokens_out": lm["tokens_out"],
        "wall_s": round(wall, 2),
        "calls_per_s": round(lm["calls"] / wall, 3),
        "tokens_out_per_s": round(lm["tokens_out"] / wall, 1),
        "command": "python benchmarks/run.py --only embedded",
    }


def _variants(count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` question/answer rows sampled from the shared sets, with numbers and words varied."""
    import random
    import re

    rng = random.Random(seed)
    base = []
    for line in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        base.append((row["question"], row["answer"]))
    for row in json.loads((SHARED / "code_alpaca" / "code_alpaca_2k.json").read_text()):
        if row["output"].strip():
            base.append((row["instruction"] + " " + row["input"], row["output"]))
    vocab = sorted({w for q, _ in base[:3000] for w in q.split() if w.isalpha()})
    rows = []
    for i in range(count):
        q, a = base[i % len(base)] if i < len(base) else rng.choice(base)
        if i >= len(base):
            q = re.sub(r"\d+", lambda m: str(rng.randint(2, 999)), q)
            words = q.split()
            for _ in range(max(1, len(words) // 4)):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            q = " ".join(words)
        rows.append({"question": q, "answer": a})
    return rows


def bench_dedupe(seeds: int = 200_000) -> dict:
    """Exact plus near-duplicate dedupe of `seeds` seeds (loading included)."""
    from flows.core.config import SeedsConfig
    from flows.ingest.seeds import load_seeds

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seeds.jsonl"
        with path.open("w") as fh:
            for row in _variants(seeds):
                fh.write(json.dumps(row) + "\n")
        cfg = SeedsConfig.model_validate({"sources": [{"path": str(path), "domain": "math"}]})
        start = time.monotonic()
        result = load_seeds(cfg)
        wall = time.monotonic() - start
    return {
        "seeds": seeds,
        "wall_s": round(wall, 2),
        "exact_duplicates": result.exact_duplicates,
        "near_duplicates": result.near_duplicates,
        "kept": len(result.seeds),
        "target": "under 60 s",
        "command": "python benchmarks/run.py --only dedupe",
    }


def bench_load_sharegpt(rows: int = 1_000_000) -> dict:
    """Load a 1,000,000-row ShareGPT JSONL (sample 19,000) in a child; report its peak memory."""

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sharegpt.jsonl"
        variants = _variants(50_000, seed=1)
        with path.open("w") as fh:
            for i in range(rows):
                q = variants[i % len(variants)]
                conv = [
                    {"from": "human", "value": f"{q['question']} (#{i})"},
                    {"from": "gpt", "value": q["answer"]},
                ]
                fh.write(json.dumps({"conversations": conv}) + "\n")
        size_mb = path.stat().st_size / 1e6
        figures = _child("--measure-load", str(path))
    return {
        "rows": rows,
        "file_mb": round(size_mb, 1),
        **figures,
        "target": "peak under 2,048 MB",
        "command": "python benchmarks/run.py --only load_sharegpt",
    }


def _seeds_config(tmp: str, base_url: str, rows: list[dict], **sections: object) -> Path:
    """A config over `rows` written as one seeds file, with its own cache in tmp."""
    import yaml

    path = Path(tmp) / "seeds.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg_path = Path(tmp) / "config.yaml"
    data = {
        "lms": _remote_lms(base_url),
        "seeds": {"sources": [{"path": str(path), "domain": "math"}]},
        "cache": {"dir": str(Path(tmp) / "cache")},
        "run": {"concurrency": 64},
        **sections,
    }
    cfg_path.write_text(yaml.safe_dump(data))
    return cfg_path


def bench_rerun(seeds: int = 100_000) -> dict:
    """Populate the cache; rerun unchanged as a fresh process (what `master run` costs, the
    interpreter and imports included); rerun unchanged with the run cache off (the
    per-dialogue path a nightly run takes when some input changed); then edit 1% of seeds.

    Retrieval uses the tests' hashing embedder (MiniLM over 100k questions is its own cost,
    measured separately), so the figures are the pipeline's and the cache's own."""
    from conftest import hashing_embedder

    with tempfile.TemporaryDirectory() as tmp, fake_server(0.0) as (base_url, served):
        rows = _variants(seeds, seed=2)
        # drop only broken dialogues (the fake's answers are placeholders): outputs of full size
        cfg_path = _seeds_config(tmp, base_url, rows, quality={"hard": ["structure"]})
        figures: dict[str, object] = {"seeds": seeds}

        def timed(label: str, environ: dict[str, str] | None = None) -> dict:
            before, start = served(), time.monotonic()
            cfg = load_config(cfg_path, environ=environ or {})
            summary = run_pipeline(cfg, Path(tmp) / label, embedder=hashing_embedder).summary
            figures[f"{label}_wall_s"] = round(time.monotonic() - start, 2)
            figures[f"{label}_calls"] = served() - before
            figures[f"{label}_dialogues"] = sum(summary["dialogues"].values())
            figures[f"{label}_run_cache"] = summary["run_cache"]
            return summary

        timed("populate")
        before, start = served(), time.monotonic()
        child = _child("--measure-rerun", str(cfg_path), str(Path(tmp) / "cached"))
        figures["cached_process_wall_s"] = round(time.monotonic() - start, 2)
        figures.update({f"cached_{k}": v for k, v in child.items()})
        figures["cached_calls"] = served() - before
        same = all(
            (Path(tmp) / "cached" / name).read_bytes()
            == (Path(tmp) / "populate" / name).read_bytes()
            for name in ("dataset.parquet", "dataset.jsonl", "messages.jsonl", "rejects.parquet")
        )
        figures["cached_identical_dataset"] = same
        timed("per_dialogue", {"MASTER__CACHE__REPLAY_RUNS": "false"})
        for i in range(0, len(rows), 100):
            rows[i] = {**rows[i], "answer": rows[i]["answer"] + " (revised)"}
        (Path(tmp) / "seeds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        timed("one_percent")
        figures["one_percent_call_fraction"] = round(
            figures["one_percent_calls"] / max(1, figures["populate_calls"]),  # type: ignore[operator]
            4,
        )
    figures["targets"] = "cached rerun of 100k under 15 s with 0 calls; 1% edits ~1% of calls"
    figures["command"] = f"python benchmarks/run.py --only rerun  # {seeds} seeds"
    return figures


def measure_rerun(config: str, out: str) -> int:
    """Child side of rerun: one run in a fresh process; prints its figures as JSON."""
    from conftest import hashing_embedder

    start = time.monotonic()
    summary = run_pipeline(load_config(config, environ={}), Path(out), embedder=hashing_embedder)
    figures = {
        "run_wall_s": round(time.monotonic() - start, 2),
        "run_cache": summary.summary["run_cache"],
        "dialogues": sum(summary.summary["dialogues"].values()),
    }
    print(json.dumps(figures))
    return 0


def bench_soak(seeds: int = 10_000) -> dict:
    """10,000 seeds against a server failing 5% of calls with 500 and 5% with 429: every seed
    ends as exactly one dialogue or one reported failure, and summary.json adds up."""
    import polars as pl

    from conftest import hashing_embedder

    extra = ("--fail-rate-500", "0.05", "--fail-rate-429", "0.05", "--retry-after", "0.2")
    with tempfile.TemporaryDirectory() as tmp, fake_server(0.02, extra) as (base_url, served):
        quality = {"quality": {"hard": ["structure"]}}  # the fake's answers are placeholders
        cfg_path = _seeds_config(tmp, base_url, _variants(seeds, seed=4), **quality)
        start = time.monotonic()
        out = Path(tmp) / "out"
        result = run_pipeline(load_config(cfg_path, environ={}), out, embedder=hashing_embedder)
        summary = result.summary
        wall = time.monotonic() - start
        requests = served()
        # the run's own files, published or set aside by a gate (the soak counts every seed)
        rows = pl.read_parquet(result.files / "dataset.parquet")
        rejects = pl.read_parquet(result.files / "rejects.parquet")
    after_load = rejects.filter(
        pl.col("stage").is_in(["quality", "simulate", "retrieve", "budget", "breaker"])
    )
    ended = rows["seed_id"].to_list() + after_load["seed_id"].to_list()
    seeds_block, q = summary["seeds"], summary["quality"]
    checks = {
        "every_kept_seed_ended_once": len(ended) == len(set(ended)) == seeds_block["kept"],
        "no_duplicate_rows": rows.select("seed_id", "scenario").is_unique().all(),
        "rows_equal_accepted": rows.height == q["accepted"] == summary["rows"]["published"],
        "rejected_equal_quality_rejects": q["rejected"]
        == after_load.filter(pl.col("stage") == "quality").height,
        "seeds_add_up": seeds_block["loaded"]
        == seeds_block["kept"]
        + seeds_block["rejected"]
        + seeds_block["exact_duplicates"]
        + seeds_block["near_duplicates"]
        + seeds_block["contaminated"]
        + seeds_block["skipped"],
    }
    return {
        "seeds": seeds,
        "fail_rate_500": 0.05,
        "fail_rate_429": 0.05,
        "kept": seeds_block["kept"],
        "dialogues": rows.height,
        "quality_rejects": q["rejected"],
        "failed": q["failed"],
        "failures": q["failures"],
        "calls": summary["lm"]["calls"],
        "requests": requests,
        "failed_attempts": requests - summary["lm"]["calls"],
        "wall_s": round(wall, 2),
        **checks,
        "all_checks_pass": all(checks.values()),
        "command": f"python benchmarks/run.py --only soak  # {seeds} seeds",
    }


def bench_scale(seeds: int = 30_000) -> dict:
    """As a user with a large seed set runs it: `seeds` varied GSM8K-style seeds, the real
    MiniLM retriever with a cold cache, a server failing 5% of calls with 500 and 5% with
    429. The run is a child process (its own imports, model load and peak RSS); this process
    notes when the first request reaches the server. Every seed must end in the dataset or in
    rejects.parquet with a reason. Then the same run twice more, each a fresh process: the
    first retries the dialogues that failed, the second (nothing left to retry) is a replay."""
    import polars as pl

    extra = ("--fail-rate-500", "0.05", "--fail-rate-429", "0.05", "--retry-after", "0.2")
    load_average = os.getloadavg()[0]  # other work on the machine slows the model's figures
    with tempfile.TemporaryDirectory() as tmp, fake_server(0.02, extra) as (base_url, served):
        quality = {"quality": {"hard": ["structure"]}}  # the fake's answers are placeholders
        cfg_path = _seeds_config(tmp, base_url, _variants(seeds, seed=5), **quality)
        run = _watched_scale(cfg_path, Path(tmp) / "out", served)
        files = Path(run.pop("files"))
        rows = pl.read_parquet(files / "dataset.parquet")
        rejects = pl.read_parquet(files / "rejects.parquet")
        # a run whose failed dialogues were retried is stored; the next is a replay
        again = _watched_scale(cfg_path, Path(tmp) / "again", served)
        third = _watched_scale(cfg_path, Path(tmp) / "third", served)
    ended = (
        rows["seed_id"].to_list()
        + rejects.filter(pl.col("stage") != "load")["seed_id"].drop_nulls().to_list()
    )
    return {
        "seeds": seeds,
        "embedder": "all-MiniLM-L6-v2 (OpenVINO on its ONNX export, CPU), cold cache",
        "fail_rate_500": 0.05,
        "fail_rate_429": 0.05,
        "load_average_at_start": round(load_average, 2),
        **run,
        "every_seed_in_dataset_or_rejects": len(set(ended)) >= run["kept"],
        "every_reject_has_a_reason": rejects.height == 0
        or bool(rejects["reason"].str.len_chars().min()),
        **{
            f"{name}_{key}": figures[key]
            for name, figures in (("rerun", again), ("third", third))
            for key in ("wall_s", "process_wall_s", "run_cache", "requests", "failed")
            + ("longest_silence_s", "longest_silence_after")
        },
        "command": f"python benchmarks/run.py --only scale --seeds {seeds}",
    }


def _watched_scale(config: Path, out: Path, served: Callable[[], int]) -> dict:
    """One run of measure_scale in a child process, watched as its user would: when the
    first request reached the server, the run's figures, the requests it made and the
    longest time its stderr said nothing."""
    cmd = [sys.executable, __file__, "--measure-scale", str(config), str(out)]
    before = served()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, first = time.monotonic(), None
    told: list[tuple[float, str]] = []  # (seconds after start, line) of what the user sees
    reader = threading.Thread(
        target=lambda: told.extend((time.monotonic() - start, line) for line in proc.stderr)
    )
    reader.start()
    while proc.poll() is None:
        if first is None and served() > before:
            first = round(time.monotonic() - start, 2)
        time.sleep(0.05)
    process_wall = round(time.monotonic() - start, 2)
    reader.join()
    stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError("".join(line for _, line in told)[-3000:])
    silence, after = _longest_silence(told, process_wall)
    return {
        "first_request_s": first,
        "longest_silence_s": silence,
        "longest_silence_after": after,
        **json.loads(stdout.strip().splitlines()[-1]),
        "process_wall_s": process_wall,
        "requests": served() - before,  # attempts, the failed ones too
    }


def _longest_silence(told: list[tuple[float, str]], end: float) -> tuple[float, str]:
    """The longest time the run's stderr said nothing (from the start to the first line,
    between lines, from the last line to the end), and the line it followed."""
    marks = [(0.0, "(start)"), *told, (end, "(end)")]
    gap, after = max(
        (later[0] - earlier[0], earlier[1].strip()) for earlier, later in itertools.pairwise(marks)
    )
    return round(gap, 2), after[:160]


def measure_scale(config: str, out: str) -> int:
    """Child side of scale: one run with MiniLM; prints its figures as JSON: wall time by
    stage, when each long step was first and last told, peak RSS."""
    import functools
    import resource

    from flows.commands.terminal import setup_logging, showing
    from flows.planning.jobs import plan_stream
    from flows.runs.pipeline import drive
    from flows.runs.progress import Progress
    from flows.runs.stages import (
        Stages,
        load_more_stage,
        load_stage,
        publish,
        replay_run,
        simulate_stage,
    )

    start = time.monotonic()
    spans: dict[str, list[float]] = {}
    stage_s: dict[str, float] = {}

    class Timed(Progress):
        def step(self, name: str, done: int, total: int = 0) -> None:
            now = round(time.monotonic() - start, 2)
            spans.setdefault(name, [now, now])[1] = now
            super().step(name, done, total)

    progress = Timed()

    def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            began = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                stage_s[label] = round(stage_s.get(label, 0) + time.monotonic() - began, 2)

        return run

    stages = Stages(
        replay=timed("replay", replay_run),
        load=timed("load", functools.partial(load_stage, progress=progress)),
        load_more=timed("backfill_load", functools.partial(load_more_stage, progress=progress)),
        plan=timed("plan", functools.partial(plan_stream, tell=progress.step)),
        simulate=timed("simulate", functools.partial(simulate_stage, progress=progress)),
        publish=timed("publish", functools.partial(publish, progress=progress)),
    )
    setup_logging(verbose=False)  # what `master run` shows off a terminal, on stderr
    with showing(progress, terminal=False):
        result = drive(load_config(config, environ={}), Path(out), stages=stages)
    wall = time.monotonic() - start
    summary = result.summary
    figures = {
        "wall_s": round(wall, 2),
        "stage_s": stage_s,
        "steps_s": spans,  # step: [first told, last told], seconds after the run started
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "kept": summary["seeds"]["kept"],
        "dialogues": sum(summary["dialogues"].values()),
        "quality_rejects": summary["quality"]["rejected"],
        "failed": summary["quality"]["failed"],
        "calls": summary["lm"]["calls"],
        "run_cache": summary["run_cache"],
        "files": str(result.files),
    }
    print(json.dumps(figures))
    return 0


def bench_real_endpoint(seeds: int = 12) -> dict:
    """The bundled seeds against a real OpenAI-compatible server with a small model
    (llama-cpp-python's server, SmolLM2-135M), agents on our TurnAdapter and on DSPy's
    ChatAdapter: dialogues generated, format repairs and failures per role, calls per second."""
    from llama_server import LlamaServer

    figures: dict[str, Any] = {"seeds": seeds}
    with LlamaServer() as server:
        for adapter in ("turn", "chat"):
            with tempfile.TemporaryDirectory() as tmp:
                env = {
                    **server.role_env(adapter=adapter),
                    "MASTER__SEEDS__SAMPLE": str(seeds),
                    "MASTER__CACHE__DIR": str(Path(tmp) / "cache"),
                }
                cfg = load_config(environ=env)
                start = time.monotonic()
                result = run_pipeline(cfg, Path(tmp) / "out")
                wall = time.monotonic() - start
            quality, lm = result.summary["quality"], result.summary["lm"]
            figures[adapter] = {
                "generated": quality["accepted"] + quality["rejected"],
                "accepted": quality["accepted"],
                "failed": quality["failed"],
                "unjudged": quality["unjudged"],
                "format_repairs": {r: v["format_repairs"] for r, v in lm["by_role"].items()},
                "format_failures": {r: v["format_failures"] for r, v in lm["by_role"].items()},
                "calls": lm["calls"],
                "wall_s": round(wall, 1),
                "calls_per_s": round(lm["calls"] / wall, 3),
            }
    figures["command"] = "python benchmarks/run.py --only real_endpoint"
    return figures


PEERS_BENCH = Path(os.environ.get("MASTER_PEERS_BENCH", ROOT.parent / "shared" / "peers-bench"))
#: The harness rotates this order each rep, so each peer always runs right after the same one.
#: The asyncio loop follows distilabel, the largest peer: run right after it, a CPU-bound
#: process such as `master run` is slower, the latency-bound loop is not
#: (benchmarks/decisions.md).
PEERS = ("raw-aiohttp", "master", "dspy-async", "dspy-threads", "curator", "distilabel")


def _peers_venv(venv: Path, env: dict[str, str]) -> None:
    """The peers' venv as run.sh builds it, plus polars: peer_master.py reads the dataset back
    with it and the shared requirements.txt does not list it (the version is ours)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True, env=env)
        subprocess.run(
            [*pip, "-r", "requirements.txt", "-c", "constraints.txt"],
            check=True, cwd=PEERS_BENCH, env=env,
        )  # fmt: skip
    if subprocess.run([str(python), "-c", "import polars"], capture_output=True).returncode:
        import polars

        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"polars=={polars.__version__}"],
            check=True, env=env,
        )  # fmt: skip


def bench_peers(seeds: int = 300, reps: int = 3) -> dict:
    """`master run` beside a bare asyncio + aiohttp loop, DSPy, Curator and distilabel, in one
    run of the shared side-by-side benchmark (its README): the same seeds x 3 calls against
    one fake server (200 ms, 64 in flight), each tool as a whole process, cold (fresh cache)
    and then warm (same cache, new process). `master` is this checkout's code. Start-up
    targets: the cold `master run` process at most 1.25x the asyncio loop's process, the warm
    rerun faster than every other tool's, peak memory under 300 MB.

    A process wall is the peer's script under /usr/bin/time. The asyncio loop's script is its
    process; master's script (peer_master.py) runs `master run` as a child and times that
    process as its work wall, then imports polars to read the dataset back into the bench's
    common output and looks up the package version in another process. The cold target is
    judged on the `master run` process; the script's wall is reported beside it."""
    runner = PEERS_BENCH / "run.sh"
    with tempfile.TemporaryDirectory() as tmp:
        master = Path(tmp) / "bin" / "master"  # this checkout, whatever the venv points at
        master.parent.mkdir()
        master.write_text(
            f'#!/bin/sh\nPYTHONPATH={ROOT} exec {Path(sys.executable).with_name("master")} "$@"\n'
        )
        master.chmod(0o755)
        (master.parent / "python").symlink_to(sys.executable)  # its version look-up
        venv = Path(os.environ.get("PEERS_VENV", "/tmp/peers-venv"))
        env = {**os.environ, "MASTER_BIN": str(master)}
        env.pop("PYTHONPATH", None)  # the peers run in their own venv
        _peers_venv(venv, env)
        if (venv / "bin" / "python").exists():  # byte-compiled once, before any is timed
            warm = "import aiohttp, dspy, distilabel.pipeline, bespokelabs.curator, polars"
            subprocess.run([venv / "bin" / "python", "-c", warm], env=env, capture_output=True)
        # this checkout's bytecode too (`make bytecode`): PYTHONDONTWRITEBYTECODE, set on some
        # CI images, would otherwise have every `master` process compile the project again
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "flows", "modules", "signatures"],
            cwd=ROOT, capture_output=True, check=True,
        )  # fmt: skip
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        results = Path(tmp) / "results"
        done = subprocess.run(
            [str(runner), "--reps", str(reps), "--n", str(seeds), "--port", str(port),
             "--peers", ",".join(PEERS), "--results-dir", str(results)],
            env=env, capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        print(done.stdout[-4000:], done.stderr[-2000:], flush=True)
        raw = json.loads(next(results.glob("raw-*.json")).read_text())
    summary = raw["summary"]

    def per_peer(key: str) -> dict[str, float | None]:
        return {p: summary[p][key] and round(summary[p][key], 2) for p in PEERS if p in summary}

    cold, warm = per_peer("cold_proc_wall_s"), per_peer("warm_proc_wall_s")
    # timed inside each peer's script; master's is its whole `master run` child process
    warm_work = per_peer("warm_work_wall_s")
    rss = per_peer("peak_tree_rss_mb")
    others = [w for p, w in warm.items() if p != "master" and w is not None]
    cold_work = per_peer("cold_work_wall_s")
    baseline = cold.get("raw-aiohttp")

    def vs_baseline(wall: float | None) -> float | None:
        return round(wall / baseline, 2) if wall and baseline else None

    return {
        "seeds": seeds,
        "reps": reps,
        "latency_s": raw["meta"]["latency_ms"] / 1000,
        "concurrency": raw["meta"]["concurrency"],
        "cold_process_s": cold,
        "master_run_process_s": cold_work.get("master"),
        "master_cold_vs_asyncio": vs_baseline(cold_work.get("master")),
        "master_script_vs_asyncio": vs_baseline(cold.get("master")),
        "warm_rerun_process_s": warm,
        "warm_rerun_work_s": warm_work,
        "master_warm_fastest": bool(warm["master"] and all(warm["master"] < w for w in others)),
        "peak_tree_rss_mb": rss,
        "checks": {p: summary[p]["check"] for p in PEERS if p in summary},
        "targets": "the cold `master run` process <= 1.25x the asyncio loop's process; warm "
        "under 1.5 s and faster than every other tool's; peak RSS under 300 MB",
        "command": f"python benchmarks/run.py --only peers  # {seeds} seeds, {reps} rep(s)",
    }


def bench_injection() -> dict:
    """Seeds that try to take over the roles, against an obedient fake model."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from injection import bench_injection as run

    return run()


def bench_versions(seeds: int = 100_000) -> dict:
    """What versioning adds to a run that publishes `seeds` rows: the new version's id (its
    dataset.parquet's sha256), the changes against the previous version (both read, 1% of
    rows regenerated), and the switch with pruning. Rows of a realistic size: 8 turns of
    about 400 characters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flows.publish.changes import changes_block, diff_files, diff_rows, read_rows
    from flows.publish.versions import OutputFolder, Release

    def dataset(folder: Path, revised: int) -> None:
        text = "The weak student works the problem step by step and states a result. " * 6
        rows = [
            {"seed_id": f"{i:016x}", "scenario": ("error_correction", "debate", "analogy")[i % 3],
             "conversations": [{"from": "human" if t % 2 == 0 else "gpt",
                                "value": f"{text} {i} {t}" + (" revised" if i % 100 == 0
                                                               and revised else "")}
                               for t in range(8)]}
            for i in range(seeds)
        ]  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows), folder / "dataset.parquet")
        (folder / "summary.json").write_text(json.dumps(
            {"seeds": {"kept": seeds}, "quality": {"accepted": seeds, "rejected": 0},
             "config_hash": "x", "rows": {"published": seeds}}))  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        folder = OutputFolder(Path(tmp) / "out")
        folder.prepare()
        first = folder.stage()
        dataset(first, revised=0)
        folder.publish(first, "20260101T000000Z-00000000")
        staged = folder.stage()
        dataset(staged, revised=1)
        release = Release(folder, staged, folder.current())
        start = time.monotonic()
        vid = release.new_id()
        id_s = time.monotonic() - start
        start = time.monotonic()
        assert release.previous is not None
        kinds = diff_rows(
            read_rows(release.previous.path / "dataset.parquet"),
            read_rows(staged / "dataset.parquet"),
        )
        block = changes_block(release.previous.id, kinds, release.previous.summary,
                              release.previous.summary)  # fmt: skip
        changes_s = time.monotonic() - start
        start = time.monotonic()
        folder.publish(staged, vid)
        folder.prune(1)
        switch_s = time.monotonic() - start
        # a replayed run publishes the same bytes again: no row is read
        again = folder.stage()
        for name in ("dataset.parquet", "summary.json"):
            os.link(folder.root / "current" / name, again / name)
        start = time.monotonic()
        same = diff_files(folder.root / "current" / "dataset.parquet", again / "dataset.parquet")
        replay_s = time.monotonic() - start
        assert len(same["unchanged"]) == seeds
        size_mb = (folder.root / "dataset.parquet").stat().st_size / 1e6
    return {
        "seeds": seeds,
        "dataset_parquet_mb": round(size_mb, 1),
        "version_id_s": round(id_s, 3),
        "changes_s": round(changes_s, 2),
        "switch_and_prune_s": round(switch_s, 3),
        "replay_changes_s": round(replay_s, 3),
        "rows_regenerated": block["rows_regenerated"],
        "rows_unchanged": block["rows_unchanged"],
        "command": f"python benchmarks/run.py --only versions  # {seeds} rows",
    }


def bench_pool(seeds: int = 667) -> dict:
    """benchmarks/pool.py: throughput over 1, 2 and 4 replicas, and one of two killed."""
    from pool import bench_pool as measure

    return measure(seeds)


def bench_embedding(sentences: int = 2048) -> dict:
    """benchmarks/embedding.py: MiniLM's backends and partner matching on this machine."""
    from embedding import bench_embedding as measure

    return measure(sentences)


BENCHES: dict[str, Callable[..., dict]] = {
    "rerun": bench_rerun,
    "dedupe": bench_dedupe,
    "load_sharegpt": bench_load_sharegpt,
    "throughput": bench_throughput,
    "baseline": bench_baseline,
    "embedded": bench_embedded,
    "real_endpoint": bench_real_endpoint,
    "faults": bench_faults,
    "growth": bench_growth,
    "injection": bench_injection,
    "soak": bench_soak,
    "peers": bench_peers,
    "versions": bench_versions,
    "pool": bench_pool,
    "embedding": bench_embedding,
    "scale": bench_scale,
}


def _machine() -> dict[str, object]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "versions": {p: version(p) for p in ("dspy", "prefect", "litellm", "llama_cpp_python")},
    }


#: The measurements behind design decisions in the code (whose comments name the bench, not
#: the figures), written under RESULTS.md's table.
DECISIONS = ROOT / "benchmarks" / "decisions.md"


def _markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m['cpus']} CPUs, {m['platform']}, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; run {m['date']}.",
        "",
    ]
    if any(" (" in name for name in results["benches"]):
        lines += [
            "Benches named `NAME (TAG)` were run with `--tag TAG` on another version of the code:",
            "the `before: ...` pairs at commit f04893d (main at 00973bb plus these benchmarks: "
            "LiteLLM engine, 64 dialogue threads), with "
            "`git checkout f04893d && python benchmarks/run.py --only baseline throughput "
            "--seeds 2000 --tag 'before: LiteLLM engine, 64 threads'`; the "
            "`before: 42742c0, perf2 start` pair at commit 42742c0 (main when the perf2 branch "
            "started), run the same way just before the untagged figures of this branch; "
            "`growth (before: fd821da, DSPy history on)` is `python benchmarks/run.py --only "
            "growth` at commit fd821da of perf2 (before f3e76a8 turned DSPy's history off), "
            "kept under that name when the untagged growth figures were measured.",
            "",
        ]
    lines += [
        "| bench | figure | value | command |",
        "|---|---|---|---|",
    ]
    for name, figures in results["benches"].items():
        command = figures.get("command", "")
        for key, value in figures.items():
            if key != "command":
                lines.append(f"| {name} | {key} | {value} | `{command}` |")
    return "\n".join(lines) + "\n\n" + DECISIONS.read_text(encoding="utf-8")


def measure_load(path: str) -> int:
    """Child side of load_sharegpt: load in a fresh process so its peak memory is its own."""
    import resource

    from flows.core.config import SeedsConfig
    from flows.ingest.seeds import load_seeds

    cfg = SeedsConfig.model_validate(
        {"sources": [{"path": path, "domain": "general", "format": "sharegpt"}], "sample": 19000}
    )
    start = time.monotonic()
    result = load_seeds(cfg)
    figures = {
        "wall_s": round(time.monotonic() - start, 2),
        "loaded": result.loaded,
        "kept": len(result.seeds),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    print(json.dumps(figures))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="benches to run")
    parser.add_argument("--measure-load", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--measure-growth", type=int, metavar="SEEDS", help=argparse.SUPPRESS)
    parser.add_argument(
        "--measure-rerun", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--measure-scale", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite RESULTS.md from results.json"
    )
    parser.add_argument("--seeds", type=int, help="override the seed count of the chosen benches")
    parser.add_argument(
        "--tag", help="store the figures as 'NAME (TAG)', e.g. to keep a before/after pair"
    )
    args = parser.parse_args()
    if args.measure_load:
        return measure_load(args.measure_load)
    if args.measure_growth:
        return measure_growth(args.measure_growth)
    if args.measure_rerun:
        return measure_rerun(*args.measure_rerun)
    if args.measure_scale:
        return measure_scale(*args.measure_scale)
    previous = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    if args.render:
        RESULTS_MD.write_text(_markdown(previous))
        return 0
    results = {"machine": _machine(), "benches": previous.get("benches", {})}
    for name in args.only or list(BENCHES):
        print(f"running {name} ...", flush=True)
        bench = BENCHES[name]
        figures = bench(args.seeds) if args.seeds else bench()  # type: ignore[call-arg]
        if name == "growth" and not args.tag:
            figures = merge_growth(results["benches"].get(name, {}), figures)
        if args.tag:
            figures["command"] += f" --tag '{args.tag}'"
        label = f"{name} {figures['seeds']}" if name == "scale" else name  # one per size
        results["benches"][f"{label} ({args.tag})" if args.tag else label] = figures
        print(json.dumps(figures, indent=2), flush=True)
    _pipeline_vs_baseline(results, args.tag)
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    RESULTS_MD.write_text(_markdown(results))
    print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
