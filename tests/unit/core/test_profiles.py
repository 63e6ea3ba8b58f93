"""Profiles compose predictably: includes first, each once, left to right; boostqa follows
the paper's procedure, boostqa-clean adds our recommendations, both readings of the seed mix
are there, and the dataset card states every setting where a run departs from the paper or
the paper gives no value."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.core import config as config_module
from flows.core.config import STRUCTURE_CHECKS, ConfigError, MasterConfig, load_config
from flows.publish.card import render_card
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


ADDED = re.compile(r"^([^:]+): added; not in the paper \((.+)\)$")
VERSUS = re.compile(r"^([^:]+): the paper: (.+); here: (.+)$")


def settings(cfg: MasterConfig) -> dict[str, str]:
    """Each difference's setting -> "added" or "versus"; every line is one of the two forms."""
    found = {}
    for line in differences(cfg):
        added, versus = ADDED.match(line), VERSUS.match(line)
        assert added or versus, line
        found[(added or versus).group(1)] = "added" if added else "versus"  # type: ignore[union-attr]
    return found


def line_of(cfg: MasterConfig, setting: str) -> str:
    (line,) = [d for d in differences(cfg) if d.startswith(f"{setting}: ")]
    return line


def test_boostqa_follows_the_papers_procedure_and_adds_nothing_it_does_not_describe() -> None:
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
    assert cfg.scenarios.analogy_pool == "seeds" and cfg.merge.mode == "replace"
    assert cfg.merge.backfill == "none"
    assert not (cfg.seeds.dedupe.exact or cfg.seeds.dedupe.near)
    assert cfg.seeds.decontamination.eval_sets == []
    # only structurally broken dialogues are dropped; the judge audits every one
    assert cfg.quality.hard_checks() == set(STRUCTURE_CHECKS) and cfg.quality.judge
    found = settings(cfg)
    assert [s for s, form in found.items() if form == "added"] == ["same-domain retrieval"]
    assert not {"deduplication of the seeds", "decontamination of the seeds", "backfill"} & set(
        found
    )
    assert "here: structure (empty, role leakage, echo" in line_of(
        cfg, "the checks that drop a dialogue"
    )
    assert not any("role's" in s for s in found)  # the paper's models and temperatures


def test_boostqa_clean_adds_dedupe_decontamination_the_strict_filter_and_backfill_as_ours() -> None:
    cfg = load_config(profile="boostqa-clean", environ={})
    assert cfg.seeds.dedupe.exact and cfg.seeds.dedupe.near
    labels = {ref.label for ref in cfg.seeds.decontamination.eval_sets}
    assert "gsm8k_test" in labels and all(set(n) <= labels for n in PAPER_BENCHMARKS.values())
    assert cfg.merge.backfill == "resimulate" and cfg.publish.name == "boost_qa_clean"
    assert {"fidelity", "judge", "answer_hidden", "no_calculation"} <= cfg.quality.hard_checks()
    found = settings(cfg)
    for setting in ("deduplication of the seeds", "decontamination of the seeds", "backfill"):
        assert found[setting] == "added", setting
    assert (
        "15 evaluation sets is dropped, covering all 7 benchmarks the paper evaluates on"
        in line_of(cfg, "decontamination of the seeds")
    )
    assert line_of(cfg, "the checks that drop a dialogue").endswith(
        "here: structure (empty, role leakage, echo, language, length, repetition, truncated), "
        "fidelity, judge, answer_hidden, no_calculation (quality.hard)"
    )
    assert "merge.backfill: resimulate" in line_of(cfg, "backfill")


#: what the card must cover on every run, whatever the config
ALWAYS = (
    "the seed mix",
    "the share of each scenario, the analogy seeds among them",
    "same-domain retrieval",
    "the neighbours an analogy partner is drawn from",
    "token caps",
    "training weights",
)


@pytest.mark.parametrize("profile", [None, "paper", "boostqa", "boostqa-clean"])
def test_every_setting_the_paper_leaves_open_is_on_every_card(profile: str | None) -> None:
    cfg = load_config(profile=profile, environ={})
    found = settings(cfg)
    assert set(ALWAYS) <= set(found)
    assert "the checks that drop a dialogue" in found
    assert "weak 1024, peer 1024, strong 1536, judge 512" in line_of(cfg, "token caps") or (
        "weak 160, peer 160, strong 200, judge 96" in line_of(cfg, "token caps")
    )


def test_both_readings_of_the_seed_mix_are_profiles_and_the_card_says_which() -> None:
    ours = load_config(profile="boostqa", environ={})
    text = load_config(profile="boostqa,paper-mix-29k", environ={})
    assert {s.label: s.sample for s in text.seeds.sources} == {
        "orca_math": 10000,
        "procqa": 10000,
        "openhermes": 9000,
    }
    # the same sources but for their sizes
    same = [s.model_dump(exclude={"sample"}) for s in ours.seeds.sources]
    assert [s.model_dump(exclude={"sample"}) for s in text.seeds.sources] == same
    paper = "the paper: 10,000 Orca-Math, 10,000 ProcQA and 9,000 OpenHermes-2.5 in its text"
    assert line_of(ours, "the seed mix").startswith(f"the seed mix: {paper}")
    assert "the text is ambiguous" in line_of(ours, "the seed mix")
    assert line_of(ours, "the seed mix").endswith(
        "here: 5,000 Orca-Math, 5,000 ProcQA, 9,000 OpenHermes-2.5 = 19,000, our reading "
        "(profile paper-mix; paper-mix-29k takes the text's)"
    )
    assert "= 29,000, the text's numbers (profile paper-mix-29k" in line_of(text, "the seed mix")


def test_the_card_names_each_departure_from_the_paper() -> None:
    cfg = load_config(profile="boostqa", environ={})
    gsm8k_only = load_config(environ={}).seeds.decontamination.eval_sets
    changed = cfg.model_copy(
        update={
            "merge": cfg.merge.model_copy(
                update={"backfill": "original", "replace_with_original": ["debate"]}
            ),
            "scenarios": cfg.scenarios.model_copy(update={"analogy_pool": "reservoir"}),
            "publish": cfg.publish.model_copy(update={"flawed_turns": "mask"}),
            "quality": cfg.quality.model_copy(update={"judge": False}),
            "lms": cfg.lms.model_copy(
                update={"weak": cfg.lms.weak.model_copy(update={"temperature": 0.9})}
            ),
            "seeds": cfg.seeds.model_copy(
                update={
                    "dedupe": cfg.seeds.dedupe.model_copy(update={"exact": True}),
                    "decontamination": cfg.seeds.decontamination.model_copy(
                        update={"eval_sets": gsm8k_only}
                    ),
                }
            ),
        }
    )
    found = " | ".join(differences(changed))
    for expected in (
        "backfill: added; not in the paper (the seed of a dropped dialogue is published as its "
        "original QA; merge.backfill: original)",
        "an ablation: the debate seeds are published as their original QA",
        "here: a reservoir of every loaded row (scenarios.analogy_pool: reservoir)",
        "out of the loss (publish.flawed_turns: mask)",
        "the verifier: the paper: Qwen2.5-32B-Instruct judged the dialogues",
        "deduplication of the seeds: added; not in the paper (exact (case",
        "with 1 evaluation set is dropped, covering none of the paper's benchmarks",
        "the weak role's temperature: the paper: 0.8; here: 0.9",
    ):
        assert expected in found, expected
    demo = differences(load_config(environ={}))
    assert "the weak role's model: the paper: Qwen/Qwen2.5-0.5B-Instruct; here: " in demo[0]


def _summary(judged: int, errors: int, dropped_by_judge: int = 0) -> dict:
    return {
        "seeds": {"kept": 10, "loaded": 10},
        "quality": {
            "accepted": judged,
            "rejected": dropped_by_judge,
            "by_check": {"judge": dropped_by_judge} if dropped_by_judge else {},
            "pass_rates": {},
            "audit": {"judged": judged, "procedural_errors": errors, "share": errors / judged},
        },
        "config_hash": "abc",
    }


def test_the_card_sets_the_judges_audit_beside_the_papers_and_lists_every_difference() -> None:
    cfg = load_config(profile="boostqa", environ={})
    when = datetime(2026, 1, 1, tzinfo=UTC)
    card = render_card(cfg, _summary(200, 9), [], {}, now=when)
    assert (
        "Judge audit: `hosted_vllm/Qwen/Qwen2.5-32B-Instruct` found procedural errors in 9 of "
        "the 200 accepted dialogues it judged (4.5%); the paper's verifier "
        "(Qwen2.5-32B-Instruct) found 4.1% of BOOST-QA with procedural errors." in card
    )
    section = card.split("## Differences from the paper's setup", 1)[1]
    assert all(f"- {line}" in section for line in differences(cfg))
    assert "Also left open by the paper:" in section
    strict = load_config(profile="boostqa-clean", environ={})
    card = render_card(strict, _summary(180, 0, dropped_by_judge=20), [], {}, now=when)
    assert "Here the judge also filters (quality.hard): it dropped 20 dialogues" in card
