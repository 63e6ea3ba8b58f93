"""Prompt optimization end to end on the fake server: saved versions with metadata, the
comparison, the augment flow using a version, and the cache re-running only changed roles."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy
import pytest

from conftest import role_lms, run_cli
from fake_llm import FakeLLMServer
from flows.core.config import load_config
from flows.runs.pipeline import run_pipeline


def _config(write_config: Callable[..., Path], base_url: str, tmp_path: Path, **opt: Any) -> Path:
    return write_config(
        role_lms(base_url),
        sample=12,
        scenarios={"proportions": {"error_correction": 1, "debate": 0, "analogy": 0}},
        optimize={
            "train_size": 4,
            "dev_size": 4,
            "settings": {"max_bootstrapped_demos": 1, "metric_threshold": 0.5},
            "agents": ["teacher"],
            "programs_dir": str(tmp_path / "programs"),
            **opt,
        },
    )


def test_optimize_saves_a_version_compares_it_and_runs_only_changed_roles(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder: Any, tmp_path: Path
) -> None:
    config = _config(write_config, fake_llm.base_url, tmp_path)
    proc = run_cli("optimize", "--config", str(config), "--scenario", "error_correction")
    assert proc.returncode == 0, proc.stderr
    saved = sorted((tmp_path / "programs" / "error_correction").glob("*.meta.json"))
    assert len(saved) == 1
    meta = json.loads(saved[0].read_text())
    version = meta["version"]
    assert saved[0].name == f"{version}.meta.json"
    assert (saved[0].parent / f"{version}.json").is_file()
    assert meta["optimizer"] == "bootstrap_few_shot" and meta["agents"] == ["teacher"]
    assert meta["train_size"] == 4 and meta["dev_size"] == 4
    assert {"metric_before", "metric_after", "date", "lms", "optimizer_settings"} <= set(meta)
    state = json.loads((saved[0].parent / f"{version}.json").read_text())
    assert state["teacher.predict"]["demos"] and not state["weak_student.predict"]["demos"]
    assert all(s["lm"] is None for s in state.values() if isinstance(s, dict) and "lm" in s)
    # DSPy's own loader reads the file (the format is DSPy's save format)
    from modules.scenarios.registry import build_programs

    program = build_programs({})["error_correction"]
    program.load(str(saved[0].parent / f"{version}.json"))
    assert program.teacher.predict.demos
    lines = proc.stdout.splitlines()
    assert any(line.startswith("baseline |") for line in lines)
    assert any(line.startswith(f"{version} |") for line in lines)

    # --compare alone: every figure comes from the cache now
    before = fake_llm.request_count
    proc = run_cli("optimize", "--config", str(config), "--scenario", "error_correction",
                   "--compare")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert fake_llm.request_count == before

    # augment with the baseline, then with the optimized version
    cfg = load_config(config, environ={})
    run_pipeline(cfg, tmp_path / "base", embedder=embedder)
    fake_llm.reset()
    tuned = cfg.model_copy(
        update={
            "scenarios": cfg.scenarios.model_copy(
                update={"programs": {"error_correction": version}}
            )
        }
    )
    result = run_pipeline(tuned, tmp_path / "tuned", embedder=embedder)
    by_model = fake_llm.count_by_model()
    assert by_model.get("weak-model", 0) == 0, by_model  # the weak student's turns are reused
    assert by_model.get("strong-model", 0) > 0  # teacher (changed) and the turn after it
    assert result.summary["lm"]["by_role"]["weak"]["cache_hits"] > 0
    rows = [json.loads(line) for line in (tmp_path / "tuned" / "dataset.jsonl").open()]
    assert rows
    provenance = (tmp_path / "tuned" / "dataset.parquet").read_bytes()
    assert version.encode() in provenance


def test_an_interrupted_optimization_reuses_its_cached_calls(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = _config(write_config, fake_llm.base_url, tmp_path)
    args = ["optimize", "--config", str(config), "--scenario", "error_correction"]
    stopped = run_cli(*args, "--max-calls", "5")
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "budget of 5 LM calls" in stopped.stderr
    assert fake_llm.request_count == 5
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    resumed_calls = fake_llm.request_count - 5

    with FakeLLMServer() as fresh:
        clean = tmp_path / "clean"
        clean.mkdir()
        text = config.read_text().replace(fake_llm.base_url, fresh.base_url)
        text = text.replace(str(tmp_path / "cache"), str(clean / "cache"))
        text = text.replace(str(tmp_path / "programs"), str(clean / "programs"))
        (clean / "config.yaml").write_text(text)
        proc = run_cli("optimize", "--config", str(clean / "config.yaml"), "--scenario",
                       "error_correction")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert resumed_calls == fresh.request_count - 5


def test_an_unknown_program_version_is_one_clear_line(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(role_lms(fake_llm.base_url), scenarios={"programs": {"debate": "nope"}})
    proc = run_cli("run", "--config", str(config), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "scenarios.programs.debate: no saved version 'nope'" in proc.stderr


@pytest.mark.parametrize("optimizer", ["mipro_v2", "gepa"])
def test_every_optimizer_in_the_registry_builds(
    optimizer: str, write_config: Callable[..., Path]
) -> None:
    import dspy

    from flows.optimization.experiment import OPTIMIZERS

    cfg = load_config(write_config(role_lms("http://127.0.0.1:9/v1")), environ={})
    build, _ = OPTIMIZERS[optimizer]
    lm = dspy.LM("openai/x", api_base="http://127.0.0.1:9/v1", api_key="k")
    optimizer, compile_settings = build(cfg, lambda *a, **k: 1.0, lm)
    assert optimizer is not None and isinstance(compile_settings, dict)


@pytest.mark.embedded
@pytest.mark.timeout(1200)
def test_bootstrap_few_shot_on_the_embedded_model(tmp_path: Path) -> None:
    """The real model, small: 3 train and 3 dev seeds, the teacher optimized, answers cut
    to 8 tokens (this checks the machinery on a real model, not the quality of its prose)."""
    env = {"MASTER__CACHE__DIR": str(tmp_path / "cache")}
    for role in ("WEAK", "STRONG"):
        env[f"MASTER__LMS__{role}__MAX_TOKENS"] = "8"
    env.update(
        {
            "MASTER__SEEDS__SAMPLE": "12",
            "MASTER__OPTIMIZE__TRAIN_SIZE": "3",
            "MASTER__OPTIMIZE__DEV_SIZE": "3",
            "MASTER__OPTIMIZE__AGENTS": "[teacher]",
            "MASTER__OPTIMIZE__SETTINGS": "{max_bootstrapped_demos: 1}",
            "MASTER__OPTIMIZE__PROGRAMS_DIR": str(tmp_path / "programs"),
            "MASTER__RUN__CONCURRENCY": "2",
        }
    )
    proc = run_cli("optimize", "--scenario", "error_correction", env=env, timeout=1100)
    assert proc.returncode == 0, proc.stderr
    (meta_path,) = (tmp_path / "programs" / "error_correction").glob("*.meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["train_size"] == 3 and meta["dev_size"] == 3
    assert meta["lms"]["strong"]["model"] == "embedded/smollm2-135m-instruct"
    assert 0.0 <= meta["metric_before"] <= 1.0 and 0.0 <= meta["metric_after"] <= 1.0
    assert any(line.startswith("baseline |") for line in proc.stdout.splitlines())


#: Small budgets: every optimizer finishes in seconds against the fake server.
SMALL = {
    "bootstrap_few_shot": {"max_bootstrapped_demos": 1},
    "mipro_v2": {
        "auto": None,
        "num_candidates": 2,
        "num_trials": 2,
        "max_bootstrapped_demos": 1,
        "minibatch": False,
    },
    "gepa": {"max_metric_calls": 24},
}


@pytest.mark.parametrize("optimizer", sorted(SMALL))
def test_every_optimizers_recorded_metric_is_what_compare_measures(
    optimizer: str,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    embedder: Any,
    tmp_path: Path,
) -> None:
    config = _config(
        write_config,
        fake_llm.base_url,
        tmp_path,
        optimizer=optimizer,
        settings=SMALL[optimizer],
        max_calls=600,
    )
    proc = run_cli("optimize", "--config", str(config), "--scenario", "error_correction")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) < 5, warnings
    (meta_path,) = (tmp_path / "programs" / "error_correction").glob("*.meta.json")
    meta = json.loads(meta_path.read_text())
    assert meta["dev_after"]["failed"] == 0 and meta["dev_after"]["ran"] == 4, meta["dev_after"]
    assert f"-> {meta['metric_after']:.3f} (over 4 dialogues)" in proc.stdout
    use_it = f"use it: scenarios.programs.error_correction: {meta['version']}" in proc.stdout
    assert use_it == (meta["metric_after"] > meta["metric_before"]), proc.stdout

    compared = run_cli("optimize", "--config", str(config), "--scenario", "error_correction",
                       "--compare")  # fmt: skip
    assert compared.returncode == 0, compared.stderr[-3000:]
    row = next(r for r in compared.stdout.splitlines() if r.startswith(f"{meta['version']} |"))
    assert abs(float(row.split(" | ")[1]) - meta["metric_after"]) <= 0.01, (row, meta)

    # the saved version loads in a run and re-runs only the calls of the agents it changed
    cfg = load_config(config, environ={})
    run_pipeline(cfg, tmp_path / "base", embedder=embedder)
    fake_llm.reset()
    programs = {"error_correction": meta["version"]}
    tuned = cfg.model_copy(
        update={"scenarios": cfg.scenarios.model_copy(update={"programs": programs})}
    )
    result = run_pipeline(tuned, tmp_path / "tuned", embedder=embedder)
    assert sum(result.summary["dialogues"].values()) > 0
    by_model = fake_llm.count_by_model()
    assert set(meta["agents"]) <= {"teacher"}  # optimize.agents restricts the changes
    assert by_model.get("weak-model", 0) == 0, by_model  # the weak student's turns are reused
    if not meta["agents"]:
        assert fake_llm.request_count == 0, by_model


def test_a_dev_set_that_mostly_fails_ends_the_experiment_saving_nothing(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = _config(write_config, fake_llm.base_url, tmp_path)
    fake_llm.responder = lambda body: "" if body["model"] == "weak-model" else None
    proc = run_cli("optimize", "--config", str(config), "--scenario", "error_correction")
    assert proc.returncode != 0
    assert "dev dialogues of the baseline failed" in proc.stderr, proc.stderr[-2000:]
    assert "nothing was saved" in proc.stderr
    assert not list((tmp_path / "programs").glob("**/*.json"))


def test_an_unknown_optimizer_setting_is_one_clear_line() -> None:
    from flows.optimization.experiment import ExperimentError, _configured

    lm = dspy.LM("openai/x", api_base="http://127.0.0.1:9/v1", api_key="k")
    fixed = {"metric": lambda *a: 1.0, "prompt_model": lm, "task_model": lm}
    with pytest.raises(ExperimentError, match="num_trails is not a setting of MIPROv2"):
        _configured(dspy.MIPROv2, {"num_trails": 2}, **fixed)
    _, compile_settings = _configured(dspy.MIPROv2, {"num_trials": 2, "auto": None}, **fixed)
    assert compile_settings == {"num_trials": 2}
