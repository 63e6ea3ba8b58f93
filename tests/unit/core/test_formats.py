"""ShareGPT and OpenAI message layouts, and the turn guards."""

from __future__ import annotations

from flows.core.formats import alternates, assistant_weights, to_messages, to_sharegpt
from modules.scenarios.agents import fixed_turn
from modules.scenarios.guards import turn_problems


def _turn(speaker: str, text: str) -> dict:
    return {**fixed_turn(speaker, text), "role": "strong"}


def test_error_correction_layout_alternates() -> None:
    turns = [
        fixed_turn("question", "Q"),
        _turn("weak_student", "w"),
        _turn("teacher", "t"),
        _turn("strong_student", "s"),
    ]
    conv = to_sharegpt(turns)
    assert [m["from"] for m in conv] == ["human", "gpt", "human", "gpt"]
    assert alternates(to_messages(conv))


def test_debate_two_rounds_alternate_mapping_and_final_only() -> None:
    turns = [fixed_turn("question", "Q")] + [
        _turn(s, s) for s in ("student_a", "student_b", "student_a", "student_b", "student_c")
    ]
    conv = to_sharegpt(turns, "alternate")
    assert [m["from"] for m in conv] == ["human", "gpt", "human", "gpt", "human", "gpt"]
    folded = to_sharegpt(turns, "final_only")
    assert [m["from"] for m in folded] == ["human", "gpt"]
    assert "Student A: student_a" in folded[0]["value"] and folded[1]["value"] == "student_c"
    assert alternates(to_messages(conv)) and alternates(to_messages(folded))


def test_analogy_merges_question_and_explanation_into_one_human_turn() -> None:
    turns = [
        fixed_turn("question", "Q1"),
        _turn("teacher", "explain"),
        _turn("strong_student", "s1"),
        fixed_turn("teacher", "Good job ... Q2"),
        _turn("strong_student", "s2"),
    ]
    conv = to_sharegpt(turns)
    assert conv[0] == {"from": "human", "value": "Q1\n\nexplain"}
    assert len(conv) == 4 and alternates(to_messages(conv))


def test_alternates_rejects_bad_layouts() -> None:
    assert not alternates([])
    assert not alternates([{"role": "assistant", "content": "x"}])
    assert not alternates([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}])
    sys_ok = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert alternates(sys_ok)


def test_turn_guards() -> None:
    assert turn_problems("Fine answer: 4.", "weak_student", "stop") == []
    assert turn_problems("  ", "weak_student", "stop") == ["empty"]
    assert turn_problems("cut", "teacher", "length") == ["truncated"]
    leaked = turn_problems("My answer is 4.\nTeacher: well done!", "weak_student", "stop")
    assert leaked == ["role_leakage:teacher"]
    assert turn_problems("Student A: I think 4.", "student_a", "stop") == []
    assert turn_problems("**Student B:** no", "student_a", "stop") == ["role_leakage:student b"]


def test_assistant_weights_zero_exactly_the_deliberately_imperfect_messages() -> None:
    def turns(*speakers: str) -> list[dict[str, str]]:
        return [{"speaker": s, "text": s} for s in speakers]

    ec = turns("question", "weak_student", "teacher", "strong_student")
    assert assistant_weights(ec, "error_correction") == [None, 0, None, 1]
    debate = turns("question", "student_a", "student_b", "student_a", "student_b", "student_c")
    assert assistant_weights(debate, "debate") == [None, 0, None, 0, None, 1]
    # final_only folds A and B into the human side: only C is an assistant message
    assert assistant_weights(debate, "debate", "final_only") == [None, 1]
    analogy = turns("question", "teacher", "strong_student", "teacher", "strong_student")
    assert assistant_weights(analogy, "analogy") == [None, 1, None, 1]
    for case, scenario in ((ec, "error_correction"), (debate, "debate")):
        assert len(assistant_weights(case, scenario)) == len(to_sharegpt(case))
