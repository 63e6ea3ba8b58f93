"""`master plan` (a dry run that calls no model) and `master cache stats|prune`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import modules.scenarios.error_correction
from conftest import role_lms
from fake_llm import FakeLLMServer
from flows.commands.dry_run import format_plan, plan_run
from flows.core.config import load_config
from flows.runs.cache_admin import cache_stats, prune
from flows.runs.pipeline import run_pipeline
from signatures import TeacherCritique


def _rows(plan: dict) -> dict[tuple[str, str], dict]:
    return {(r["scenario"], r["role"]): r for r in plan["by_scenario_role"]}


def test_plan_counts_calls_and_reasons_without_calling_a_model(
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lms = role_lms(fake_llm.base_url)
    lms["strong"]["price_in_per_mtok"] = 1.0
    config = write_config(lms, sample=6)
    cfg = load_config(config)

    told: list[tuple[str, int, int]] = []
    cold = plan_run(cfg, embedder=embedder, tell=lambda *step: told.append(step))
    assert fake_llm.request_count == 0
    steps = {name for name, _, _ in told}  # a long dry run is never silent
    assert {"reading gsm8k", "embedding the pool", "dry-running dialogues"} <= steps
    assert told[-1] == ("dry-running dialogues", 6, 6)
    assert cold["calls_cached"] == 0 and cold["calls_to_make"] > 0
    assert all(set(r["reasons"]) <= {"new seed"} for r in cold["by_scenario_role"])
    assert _rows(cold)[("analogy", "strong")]["est_cost_usd"] > 0
    assert _rows(cold)[("debate", "peer")]["est_cost_usd"] is None  # no price configured

    run = run_pipeline(cfg, tmp_path / "out", embedder=embedder).summary
    assert cold["calls_to_make"] == run["lm"]["calls"]  # the dry run predicted the bill
    fake_llm.reset()

    warm = plan_run(cfg, embedder=embedder)
    assert warm["calls_to_make"] == 0 and warm["dialogues_cached_whole"] == 6

    hotter = load_config(config, environ={"MASTER__LMS__PEER__TEMPERATURE": "0.95"})
    changed = _rows(plan_run(hotter, embedder=embedder))
    peer = changed[("debate", "peer")]
    assert peer["reasons"] == {"sampling changed": peer["to_call"]} and peer["to_call"] >= 4
    assert changed[("debate", "strong")]["reasons"] == {"earlier turn changed": 2}
    assert changed[("error_correction", "weak")]["to_call"] == 0

    edited = TeacherCritique.with_instructions("Critique briefly.")
    monkeypatch.setattr(modules.scenarios.error_correction, "TeacherCritique", edited)
    reworded = _rows(plan_run(cfg, embedder=embedder))
    assert reworded[("error_correction", "strong")]["reasons"] == {
        "instructions changed": 2,
        "earlier turn changed": 2,
    }
    assert fake_llm.request_count == 0
    assert "to call" in format_plan(plan_run(cfg, embedder=embedder))


def test_cache_stats_and_prune(
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    embedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = write_config(role_lms(fake_llm.base_url), sample=6)
    cfg = load_config(config)
    summary = run_pipeline(cfg, tmp_path / "out", embedder=embedder).summary
    stats = cache_stats(cfg.cache.dir)
    assert stats["calls"]["entries"] == summary["lm"]["calls"]
    assert stats["dialogues"]["entries"] == 6 and stats["verdicts"]["entries"] == 6
    assert stats["runs"]["entries"] == 1
    assert sum(stats["calls"]["by_role"].values()) == stats["calls"]["entries"]

    kept = prune(cfg.cache.dir, unused=True)
    assert kept == {"calls": 0, "slots": 0, "dialogues": 0, "verdicts": 0, "runs": 0}

    edited = TeacherCritique.with_instructions("Critique briefly.")
    monkeypatch.setattr(modules.scenarios.error_correction, "TeacherCritique", edited)
    removed = prune(cfg.cache.dir, unused=True)
    assert removed["calls"] == 2 and removed["dialogues"] == 2  # the two old teacher turns
    assert removed["verdicts"] == 2  # and the verdicts on those dialogues

    aged = prune(cfg.cache.dir, older_than_days=0)
    assert aged["calls"] == stats["calls"]["entries"] - 2 and aged["runs"] == 1
    assert cache_stats(cfg.cache.dir)["calls"]["entries"] == 0
