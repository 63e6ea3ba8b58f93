"""Profiles compose predictably: includes first, each once, left to right; the boostqa
profile is the paper's setup, and the dataset card names every difference from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.core import config as config_module
from flows.core.config import ConfigError, load_config
from flows.publish.paper_setup import PAPER_BENCHMARKS, differences


@pytest.fixture
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "profiles"
    folder.mkdir()
    monkeypatch.setattr(config_module, "PROFILES_DIR", folder)
    return folder


def test_profiles_apply_includes_first_each_once_and_left_to_right(profiles: Path) -> None:
    (profiles / "hot.yaml").write_text("lms: {weak: {temperature: 1.5}}\nrun: {concurrency: 3}\n")
    (profiles / "cold.yaml").write_text("lms: {weak: {temperature: 0.1}}\n")
    (profiles / "both.yaml").write_text("include: [hot, cold]\nrun: {concurrency: 5}\n")
    cfg = load_config(profile="both", environ={})
    assert cfg.lms.weak.temperature == 0.1 and cfg.run.concurrency == 5
    # `cold,hot`: hot last wins; `both,hot`: hot was applied inside both, not again
    assert load_config(profile="cold,hot", environ={}).lms.weak.temperature == 1.5
    assert load_config(profile=["both", "hot"], environ={}).lms.weak.temperature == 0.1
    assert load_config(environ={"MASTER_PROFILE": "cold,hot"}).lms.weak.temperature == 1.5
    # the base config's other settings survive a profile (mappings merge key by key)
    assert cfg.seeds.decontamination.eval_sets[0].label == "gsm8k_test"


def test_profile_include_mistakes_are_one_line_each(profiles: Path) -> None:
    (profiles / "loop.yaml").write_text("include: [loop2]\n")
    (profiles / "loop2.yaml").write_text("include: loop\n")
    (profiles / "typo.yaml").write_text("include: [nosuch]\n")
    with pytest.raises(ConfigError, match=r"includes itself \(loop -> loop2 -> loop\)"):
        load_config(profile="loop", environ={})
    with pytest.raises(ConfigError, match=r"profile 'nosuch' \(included by 'typo'\): no "):
        load_config(profile="typo", environ={})


def test_boostqa_is_the_papers_setup_and_its_card_lists_only_what_the_paper_leaves_open() -> None:
    cfg = load_config(profile="boostqa", environ={})
    assert (cfg.lms.weak.temperature, cfg.lms.peer.temperature) == (0.8, 0.6)
    assert cfg.lms.strong.temperature == 0.2 and cfg.lms.judge.model.endswith("32B-Instruct")
    assert {s.label: s.sample for s in cfg.seeds.sources} == {
        "orca_math": 5000,
        "procqa": 5000,
        "openhermes": 9000,
    }
    procqa = next(s for s in cfg.seeds.sources if s.label == "procqa")
    assert procqa.path and procqa.fields["title"] == "title"
    assert cfg.scenarios.analogy_pool == "seeds" and cfg.merge.backfill == "resimulate"
    labels = {ref.label for ref in cfg.seeds.decontamination.eval_sets}
    assert "gsm8k_test" in labels  # the bundled set always applies
    assert all(set(needs) <= labels for needs in PAPER_BENCHMARKS.values())
    assert differences(cfg) == []


def test_the_card_names_each_departure_from_the_paper() -> None:
    cfg = load_config(profile="boostqa", environ={})
    changed = cfg.model_copy(
        update={
            "merge": cfg.merge.model_copy(
                update={"backfill": "none", "replace_with_original": ["debate"]}
            ),
            "scenarios": cfg.scenarios.model_copy(update={"analogy_pool": "reservoir"}),
            "publish": cfg.publish.model_copy(update={"flawed_turns": "mask"}),
            "seeds": cfg.seeds.model_copy(
                update={
                    "decontamination": cfg.seeds.decontamination.model_copy(
                        update={"eval_sets": cfg.seeds.decontamination.eval_sets[:1]}
                    )
                }
            ),
        }
    )
    found = " | ".join(differences(changed))
    for expected in (
        "merge.backfill: resimulate",
        "ablation: the debate seeds",
        "scenarios.analogy_pool: seeds",
        "left out of the loss in every training file",
        "not decontaminated against MATH, MMLU-Pro (math), MBPP, HumanEval, MMLU, ARC, SciQ",
    ):
        assert expected in found
    demo = differences(load_config(environ={}))
    assert any("the weak role runs `embedded/smollm2-135m-instruct`" in d for d in demo)
