"""The judge (modules/scenarios/judge.py): it is told the script, its reply parses robustly, and a
reply that never parses is `unjudged`, counted and reported, never a silent pass or fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import role_lms
from fake_llm import FakeLLMServer
from flows.quality.checks import judge_check
from modules.lm.call_cache import CallStore, ledger
from modules.lm.factory import build_role_lms
from modules.lm.settings import RoleLMs
from modules.scenarios.judge import UNJUDGED, Judge, script_brief
from modules.scenarios.registry import build_judge

QUESTION = "A farmer has 12 cows and buys 5 more. How many cows now?"
REFERENCE = "12 + 5 = 17. #### 17"
EC_TURNS = [
    {"speaker": "question", "text": QUESTION},
    {"speaker": "weak_student", "text": "12 + 5 = 18. The answer is 18."},
    {"speaker": "teacher", "text": "Your solution process is incorrect. Add again."},
    {"speaker": "strong_student", "text": "12 + 5 = 17. The answer is 17."},
]


def _judge(server: FakeLLMServer, tmp_path: Path, **judge_settings: object) -> Judge:
    settings = role_lms(server.base_url)
    settings["judge"] = {**settings["judge"], **judge_settings}
    lms = RoleLMs.model_validate(settings)
    lm = build_role_lms(lms, CallStore(tmp_path / "cache"), ("judge",))["judge"]
    return build_judge(lms, lm)


def _prompt(body: dict) -> str:
    return "\n".join(str(m.get("content")) for m in body["messages"])


def test_the_judges_prompt_names_the_deliberately_imperfect_turns(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    judge = _judge(fake_llm, tmp_path)
    judge(question=QUESTION, reference=REFERENCE, turns=EC_TURNS, scenario="error_correction")
    prompt = _prompt(fake_llm.requests[-1])
    assert "[2] Student (deliberately imperfect: mistakes here are intended): 12 + 5 = 18" in prompt
    assert "[4] Student: 12 + 5 = 17" in prompt  # the final turn is not excused
    assert "first student turn is deliberately imperfect" in prompt
    assert "without giving the final result" in prompt


def test_debaters_a_and_b_are_marked_and_analogy_brings_the_similar_reference() -> None:
    assert "Student A and Student B" in script_brief("debate")
    brief = script_brief("analogy", similar_reference="#### 42")
    assert "similar question's own standard answer: #### 42" in brief


def test_structured_output_sends_the_verdicts_json_schema(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    judge = _judge(fake_llm, tmp_path, structured_output="json_schema")
    pred = judge(question=QUESTION, reference=REFERENCE, turns=EC_TURNS, scenario="debate")
    fmt = fake_llm.requests[-1]["response_format"]
    assert fmt["type"] == "json_schema"
    schema = fmt["json_schema"]["schema"]
    assert set(schema["required"]) == {"verdict", "score", "reason"}
    assert pred.verdict in ("correct", "procedural_errors") and 1 <= pred.score <= 5


def test_a_json_object_endpoint_gets_the_schema_in_its_own_spelling(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    """llama-cpp-python's server refuses type json_schema; it constrains {json_object, schema}."""
    judge = _judge(fake_llm, tmp_path, structured_output="json_object")
    judge(question=QUESTION, reference=REFERENCE, turns=EC_TURNS)
    fmt = fake_llm.requests[-1]["response_format"]
    assert fmt["type"] == "json_object" and set(fmt["schema"]["properties"]) == {
        "verdict",
        "score",
        "reason",
    }


def test_a_reply_that_never_parses_is_unjudged_after_one_retry(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    fake_llm.responder = lambda body: "I think this dialogue is pretty good overall."
    judge = _judge(fake_llm, tmp_path)
    with ledger() as book:
        pred = judge(question=QUESTION, reference=REFERENCE, turns=EC_TURNS)
    assert pred.verdict == UNJUDGED and pred.score is None
    assert "did not parse" in pred.reason and "pretty good" in pred.reason
    assert [r.format for r in book.records].count("failed") == 2  # the try and the retry
    result = {"verdict": pred.verdict, "score": pred.score, "reason": pred.reason}
    rejected = judge_check(result, 3, unjudged="reject")
    kept = judge_check(result, 3, unjudged="keep")
    assert rejected["ok"] is False and kept["ok"] is None
    assert rejected["reason"].startswith("unjudged:")


def test_an_out_of_range_score_is_retried_then_unjudged(
    fake_llm: FakeLLMServer, tmp_path: Path
) -> None:
    reply = json.dumps({"verdict": "correct", "score": 9, "reason": "fine"})
    fake_llm.responder = lambda body: reply
    judge = _judge(fake_llm, tmp_path, structured_output="json_schema")
    pred = judge(question=QUESTION, reference=REFERENCE, turns=EC_TURNS)
    assert pred.verdict == UNJUDGED and "score 9" in pred.reason


@pytest.mark.parametrize("scenario", ["error_correction", "debate", "analogy", None])
def test_every_script_brief_tells_the_final_turn_must_agree(scenario: str | None) -> None:
    assert "standard answer" in script_brief(scenario)
