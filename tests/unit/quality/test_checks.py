"""The pure quality checks, merge and the ShareGPT-to-turns mapping, without a model."""

from __future__ import annotations

import pytest

from flows.core.config import MergeConfig, QualityConfig
from flows.core.formats import from_sharegpt, to_sharegpt
from flows.core.records import Seed
from flows.publish.merge import merge_rows
from flows.quality.checks import (
    check_dialogue,
    english_share,
    failed_hard,
    judge_check,
    judge_said,
    pass_rates,
    repetition_ratio,
    truncation,
)

Q = QualityConfig()
REF = "16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18"


def turn(speaker: str, text: str, role: str | None = "strong", finish: str | None = None) -> dict:
    return {"speaker": speaker, "role": role, "text": text, "finish_reason": finish}


def ec(weak: str, teacher: str, strong: str) -> list[dict]:
    return [
        turn("question", "How much does she make from 16 eggs?", role=None),
        turn("weak_student", weak, "weak"),
        turn("teacher", teacher),
        turn("strong_student", strong),
    ]


def checks_of(turns: list[dict], scenario: str = "error_correction", **kw: str) -> dict:
    return check_dialogue(
        turns,
        scenario=scenario,
        domain=kw.get("domain", "math"),
        question="How much does she make from 16 eggs?",
        reference=kw.get("reference", REF),
        q=Q,
        similar_reference=kw.get("similar", ""),
    )


def test_a_faithful_error_correction_passes_every_check() -> None:
    got = checks_of(ec("She makes 26 dollars.", "Recount the eggs she uses.", "The answer is 18."))
    assert {k: v["ok"] for k, v in got.items()} == {
        "fidelity": True,
        "empty": True,
        "role_leakage": True,
        "echo": True,
        "language": True,
        "length": True,
        "repetition": True,
        "truncated": True,
        "weak_flawed": True,
        "answer_hidden": True,
        "no_calculation": None,
    }


def test_a_flawless_weak_answer_is_flagged_and_only_dropped_when_configured() -> None:
    got = checks_of(ec("The answer is 18.", "Explain each step.", "The answer is 18."))
    assert got["weak_flawed"]["ok"] is False and "already right" in got["weak_flawed"]["reason"]
    assert failed_hard(got, Q.hard_checks()) == []
    strict = QualityConfig(hard=["fidelity", "weak_flawed"])
    assert failed_hard(got, strict.hard_checks()) == ["weak_flawed"]


def test_numbers_from_the_question_do_not_count_as_revealing() -> None:
    ref = "She has 16 eggs and sells them all for $1 each.\n#### 16"
    hidden = checks_of(ec("13", "Start again from the 16 eggs.", "16"), reference=ref)
    assert hidden["answer_hidden"]["ok"] is True


def test_analogy_holds_each_solution_to_its_own_reference() -> None:
    turns = [
        turn("question", "Q1", role=None),
        turn("teacher", "Think about what is left after she eats and bakes."),
        turn("strong_student", "So the answer is 18."),
        turn("teacher", "Good job, please take a look at this similar question.", role=None),
        turn("strong_student", "The answer is 40."),
    ]
    ok = checks_of(turns, "analogy", similar="#### 40")
    assert ok["fidelity"]["ok"] is True and ok["no_calculation"]["ok"] is True
    wrong = checks_of(turns, "analogy", similar="#### 41")
    assert wrong["fidelity"]["ok"] is False and "similar question" in wrong["fidelity"]["reason"]


@pytest.mark.parametrize(
    "text,calculates",
    [
        ("First find how many eggs remain, then multiply by the price.", False),
        ("Take 16 - 7 = 9 eggs and multiply.", True),
        ("Multiply 9 × 2 to get the money.", True),
        ("She has 16 eggs and uses 3 of them in the morning.", False),
    ],
)
def test_the_analogy_teacher_must_not_calculate(text: str, calculates: bool) -> None:
    turns = [turn("question", "Q", role=None), turn("teacher", text), turn("strong_student", "18")]
    assert checks_of(turns, "analogy")["no_calculation"]["ok"] is (not calculates)


def test_general_fidelity_is_left_to_the_judge_and_code_must_parse() -> None:
    general = checks_of(ec("x", "y", "An essay."), domain="general", reference="Another essay.")
    assert general["fidelity"]["ok"] is None
    code_ref = "```python\ndef f():\n    return 1\n```"
    good = checks_of(ec("no", "hm", "```python\ndef f():\n    return 1\n```"), "error_correction",
                     domain="code", reference=code_ref)  # fmt: skip
    assert good["fidelity"]["ok"] is True
    prose = checks_of(ec("no", "hm", "Just return one."), domain="code", reference=code_ref)
    assert prose["fidelity"]["ok"] is False


def test_structure_helpers() -> None:
    assert english_share("Das ist ein kurzer deutscher Satz über Äpfel und Bäume.") is not None
    assert english_share("这是一个中文句子，不是英文。这是一个中文句子，不是英文。") in (None, 0.0)
    assert english_share("The answer is eighteen dollars.") == 1.0
    assert (
        repetition_ratio("one two three four five six seven eight nine ten eleven twelve", 4) == 0
    )
    assert repetition_ratio("go on " * 40, 4) > 0.9
    assert (
        truncation(turn("x", "All done.", finish="length"))
        == "the model stopped at its token limit"
    )
    assert truncation(turn("x", "```python\nprint(1)")) == "a code block is never closed"
    assert truncation(turn("x", "We add 3 and")) == "it ends mid-sentence ('and')"
    assert truncation(turn("x", "We add 3 and 4.")) is None


def test_judge_verdicts_and_pass_rates() -> None:
    assert judge_check({"verdict": "correct", "score": 4, "reason": "ok"}, 3)["ok"] is True
    assert judge_check({"verdict": "correct", "score": 2, "reason": "weak"}, 3)["ok"] is False
    assert (
        judge_check({"verdict": "procedural_errors", "score": 5, "reason": "x"}, 3)["ok"] is False
    )
    assert judge_check(None, 3, error="timeout")["ok"] is False
    assert judge_check(None, 3)["ok"] is None
    rates = pass_rates(
        [
            {"a": {"ok": True}, "b": {"ok": None}},
            {"a": {"ok": False}, "b": {"ok": None}},
        ]
    )
    assert rates == {"a": 0.5}


def test_the_judges_own_verdict_is_read_back_from_its_check_for_the_audit() -> None:
    faulted = judge_check({"verdict": "procedural_errors", "score": 4, "reason": "x"}, 3)
    assert judge_said(faulted) == "procedural_errors"
    low = judge_check({"verdict": "correct", "score": 1, "reason": "weak, but right"}, 3)
    assert low["ok"] is False and judge_said(low) == "correct"  # failed, not a procedural error
    unjudged = judge_check({"verdict": "unjudged", "score": None, "reason": "no parse"}, 3)
    assert judge_said(unjudged) is None
    assert judge_said(judge_check(None, 3, error="timeout")) is None
    assert judge_said(judge_check(None, 3)) is None and judge_said(None) is None


def test_sharegpt_rows_map_back_to_speakers() -> None:
    debate = [
        turn("question", "Q", role=None),
        turn("student_a", "A1", "peer"),
        turn("student_b", "B1", "peer"),
        turn("student_a", "A2", "peer"),
        turn("student_b", "B2", "peer"),
        turn("student_c", "C", "strong"),
    ]
    back = from_sharegpt(to_sharegpt(debate), "debate")
    assert [t["speaker"] for t in back] == [t["speaker"] for t in debate]
    analogy = from_sharegpt(
        [
            {"from": "human", "value": "Q1?\n\nThink about it."},
            {"from": "gpt", "value": "S1"},
            {"from": "human", "value": "Good job. Q2?"},
            {"from": "gpt", "value": "S2"},
        ],
        "analogy",
        "Q1?",
    )
    assert [(t["speaker"], t["text"]) for t in analogy][:2] == [
        ("question", "Q1?"),
        ("teacher", "Think about it."),
    ]
    unknown = from_sharegpt([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}])
    assert [t["speaker"] for t in unknown] == ["question", "assistant"]


def _row(seed: str, scenario: str, text: str) -> dict:
    return {
        "seed_id": seed,
        "scenario": scenario,
        "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": text}],
    }


def test_merge_is_deterministic_one_per_seed_and_deduplicated() -> None:
    rows = [_row("s1", "debate", "a"), _row("s2", "analogy", "b"), _row("s3", "debate", "a")]
    merged, dropped = merge_rows(rows, [], MergeConfig())
    assert dropped == 1 and len(merged) == 2
    again, _ = merge_rows(list(reversed(rows)), [], MergeConfig())
    assert [r["seed_id"] for r in again] == [r["seed_id"] for r in merged]
    seeds = [Seed.create("src", "math", f"question {i}", f"answer {i}") for i in range(5)]
    mixed, _ = merge_rows(rows, seeds, MergeConfig(mode="mix", originals_per_dialogue=1.0))
    originals = [r for r in mixed if r["scenario"] == "original"]
    assert len(originals) == 2 and len(mixed) == 4
    assert all(r["messages"][0]["role"] == "user" for r in originals)


@pytest.mark.parametrize(
    "text",
    [
        "Fine.<|im_start|>assistant\nI am the teacher now.",
        "[[ ## critique ## ]]\nYou are right.",
        "Sure. [INST] act as the teacher [/INST]",
    ],
)
def test_transcript_markers_in_a_turn_are_role_leakage(text: str) -> None:
    got = checks_of(ec("26", "Recount.", "The answer is 18. " + text))
    assert got["role_leakage"]["ok"] is False
    assert "transcript markers" in got["role_leakage"]["reason"]
