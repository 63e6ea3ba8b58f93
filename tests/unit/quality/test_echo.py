"""The echo check: a turn that repeats an earlier turn of another speaker fails `structure`,
and the reason names both turns; restating the question, or quoting one line, does not."""

from __future__ import annotations

import pytest

from flows.core.config import QualityConfig
from flows.quality.checks import asked_ngrams, check_dialogue, echo_check, echo_of, failed_hard

QUESTION = "Janet's ducks lay 16 eggs. She eats 3 and bakes with 4. She sells the rest at $2."
REFERENCE = "She sells 16 - 3 - 4 = 9 eggs for 9 * 2 = 18 dollars.\n#### 18"
WEAK = "She sells 16 - 3 = 13 eggs, so she makes 13 * 2 = 26 dollars. The answer is 26."
TEACHER = (
    "You forgot the eggs she uses for baking. Take those away as well before you multiply "
    "the remaining eggs by the price of one egg."
)
STRONG = "She has 16 - 3 - 4 = 9 eggs left and earns 9 * 2 dollars. The answer is 18."


def turn(speaker: str, text: str, role: str | None = "strong") -> dict:
    return {"speaker": speaker, "role": role, "text": text, "finish_reason": None}


def ec(weak: str = WEAK, teacher: str = TEACHER, strong: str = STRONG) -> list[dict]:
    return [
        turn("question", QUESTION, None),
        turn("weak_student", weak, "weak"),
        turn("teacher", teacher),
        turn("strong_student", strong),
    ]


def debate(*said: str) -> list[dict]:
    speakers = ["student_a", "student_b"] * len(said)
    turns = [turn("question", QUESTION, None)]
    turns += [turn(s, text, "peer") for s, text in zip(speakers, said[:-1], strict=False)]
    return [*turns, turn("student_c", said[-1])]


def echo(turns: list[dict], share: float = 0.9) -> dict:
    return echo_check(turns, QUESTION, share)


@pytest.mark.parametrize(
    "turns,reason",
    [
        (ec(teacher=WEAK), "turn 3 (teacher) repeats turn 2 (weak_student) verbatim"),
        (
            ec(teacher="Let me look at what you wrote. " + WEAK),
            "turn 3 (teacher) repeats turn 2 (weak_student) after a 7-word preamble",
        ),
        (ec(strong=TEACHER), "turn 4 (strong_student) repeats turn 3 (teacher) verbatim"),
        (
            ec(strong="Okay, I see it now:\n" + TEACHER),
            "turn 4 (strong_student) repeats turn 3 (teacher) after a 5-word preamble",
        ),
        (
            ec(teacher=WEAK.replace("so she makes", "and she makes")),
            "turn 3 (teacher) repeats turn 2 (weak_student) with 94% of the same words",
        ),
        (
            debate(STRONG, STRONG.replace("left and earns", "left, she earns"), "18 dollars."),
            "turn 3 (student_b) repeats turn 2 (student_a) with 94% of the same words",
        ),
    ],
)
def test_a_turn_repeating_another_speakers_turn_fails_structure_naming_both(
    turns: list[dict], reason: str
) -> None:
    checks = check_dialogue(
        turns,
        scenario="debate" if turns[-1]["speaker"] == "student_c" else "error_correction",
        domain="math",
        question=QUESTION,
        reference=REFERENCE,
        q=QualityConfig(),
    )
    assert checks["echo"] == {"ok": False, "reason": reason}
    assert "echo" in failed_hard(checks, QualityConfig(hard=["structure"]).hard_checks())


def test_a_faithful_dialogue_has_no_echo() -> None:
    assert echo(ec()) == {"ok": True, "reason": "no turn repeats another speaker's"}


def test_a_student_restating_the_question_is_not_an_echo() -> None:
    teacher = f"Read it again: {QUESTION} Which eggs does she not sell? Count those first."
    strong = f"{QUESTION} So she sells 16 - 3 - 4 = 9 eggs and makes 18 dollars."
    restated = f"So the question is: {QUESTION}"
    assert echo(ec(teacher=teacher, strong=strong))["ok"] is True
    assert echo(ec(weak=restated, teacher=restated, strong=restated))["ok"] is True


def test_a_teacher_quoting_one_line_of_the_student_is_not_an_echo() -> None:
    weak = (
        "First she eats 3 eggs, so 16 - 3 = 13 eggs are left.\n"
        "Then she sells all 13 eggs at 2 dollars each.\n"
        "So she makes 13 * 2 = 26 dollars every day. The answer is 26."
    )
    teacher = (
        'You wrote "Then she sells all 13 eggs at 2 dollars each." She also bakes with some '
        "eggs: which ones are really left to sell?"
    )
    assert echo(ec(weak=weak, teacher=teacher))["ok"] is True


def test_a_speaker_repeating_itself_or_fixed_text_is_not_an_echo_of_another_speaker() -> None:
    transition = "Good job, please take a look at this similar question. Tom has 20 apples."
    turns = [
        turn("question", QUESTION, None),
        turn("teacher", "Work out how many eggs are left to sell, then multiply by the price."),
        turn("strong_student", STRONG),
        turn("teacher", transition, None),
        turn("strong_student", STRONG),  # its own earlier answer: not another speaker's
    ]
    assert echo(turns)["ok"] is True
    turns[-1] = turn("strong_student", "Sure. " + transition)  # not generated: not echoed
    assert echo(turns)["ok"] is True


def test_short_turns_are_too_short_to_call_a_copy() -> None:
    assert echo(debate("I think it is 18.", "I think it is 18.", "It is 18 dollars."))["ok"]


def test_the_share_of_the_same_words_is_counted_against_the_longer_turn() -> None:
    earlier = "alpha bravo charlie delta echo foxtrot golf hotel india juliet"
    nine_of_ten = earlier.replace("juliet", "kilo")
    eight_of_ten = nine_of_ten.replace("india", "lima")
    none: frozenset[tuple[str, ...]] = frozenset()
    assert echo_of(nine_of_ten, earlier, none, 0.9) == "with 90% of the same words"
    assert echo_of(eight_of_ten, earlier, none, 0.9) is None
    assert echo_of(eight_of_ten, earlier, none, 0.8) == "with 80% of the same words"
    # ten words of its own and ten more: half the longer turn is the same
    assert echo_of(f"{earlier} {earlier.upper()[::-1]}", earlier, none, 0.9) is None
    # the question's word runs are not a turn's own words
    asked = asked_ngrams([earlier])
    assert echo_of(earlier + " mike", earlier + " mike", asked, 0.9) is None
