"""The agents' wire format (modules/scenarios/turn_adapter.py): what a model is sent, and how a raw
completion becomes a turn, whatever a small model writes around it."""

from __future__ import annotations

import copy
import pickle

import dspy
import pytest

from conftest import role_lms
from fake_llm import FakeLLMServer
from modules.lm.call_cache import CallStore, ledger
from modules.lm.factory import build_role_lms
from modules.lm.settings import RoleLMs
from modules.scenarios.agents import FormatError
from modules.scenarios.debate import Debate
from modules.scenarios.error_correction import ErrorCorrection
from modules.scenarios.turn_adapter import Transcript, TurnAdapter, clean_turn
from signatures import DebaterTurn, StrongStudentRevision, TeacherCritique

QUESTION = "A farmer has 12 cows and buys 5 more. How many cows now?"
REFERENCE = "12 + 5 = 17. #### 17"


def _turns(*pairs: tuple[str, str]) -> Transcript:
    return Transcript.of([{"speaker": s, "text": t} for s, t in pairs])


def test_the_system_message_holds_instructions_and_inputs_the_history_the_dialogue() -> None:
    dialogue = _turns(("question", QUESTION), ("weak_student", "It is 7."))
    messages = TurnAdapter("Teacher").format(
        TeacherCritique, [], {"question": QUESTION, "reference": REFERENCE, "dialogue": dialogue}
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    system = messages[0]["content"]
    assert system.startswith(TeacherCritique.instructions.strip()[:40])
    assert REFERENCE in system and "[[ ##" not in system
    assert QUESTION not in system  # shown once: it is the dialogue's first turn
    assert messages[1]["content"] == f"Question: {QUESTION}\n\nStudent: It is 7."


def test_own_earlier_turns_are_assistant_messages_and_the_others_user_messages() -> None:
    dialogue = _turns(
        ("question", QUESTION), ("student_a", "I say 17."), ("student_b", "I say 18.")
    )
    messages = TurnAdapter("Student A").format(
        DebaterTurn, [], {"student_name": "Student A", "question": QUESTION, "dialogue": dialogue}
    )
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", f"Question: {QUESTION}"),
        ("assistant", "I say 17."),
        ("user", "Student B: I say 18."),
    ]
    assert "Student A" in messages[0]["content"]  # its name is an input


def test_a_history_ending_with_its_own_turn_gets_a_user_cue() -> None:
    dialogue = _turns(("question", QUESTION), ("strong_student", "17."))
    messages = TurnAdapter("Student").format(
        StrongStudentRevision,
        [],
        {"question": QUESTION, "reference": REFERENCE, "dialogue": dialogue},
    )
    assert messages[-1] == {"role": "user", "content": "Student, it is your turn."}


def test_demos_reach_the_system_message_as_worked_examples() -> None:
    demo = {
        "question": "1 + 1?",
        "reference": "2",
        "dialogue": "Student: 3",
        "critique": "Recount.",
    }
    messages = TurnAdapter("Teacher").format(
        TeacherCritique,
        [demo],
        {"question": QUESTION, "reference": REFERENCE, "dialogue": _turns(("question", QUESTION))},
    )
    assert "Example 1:" in messages[0]["content"]
    assert "Teacher: Recount." in messages[0]["content"]


@pytest.mark.parametrize(
    ("raw", "clean", "repaired"),
    [
        ("The answer is 17.", "The answer is 17.", False),
        (
            "[[ ## critique ## ]]\nRecount the cows.\n\n[[ ## completed ## ]]",
            "Recount the cows.",
            True,
        ),
        ("Teacher: Recount the cows.", "Recount the cows.", True),
        ("**Teacher:** Recount.", "Recount.", True),
        ("Recount.<|im_end|>\n<|im_start|>user\nStudent: 17", "Recount.", True),
        ("assistant\nRecount.", "Recount.", True),
        ("Recount.</s>", "Recount.", True),
    ],
)
def test_a_completion_is_read_whole_with_markup_stripped(
    raw: str, clean: str, repaired: bool
) -> None:
    text, repairs = clean_turn(raw, "Teacher")
    assert text == clean
    assert bool(repairs) is repaired


def test_another_speakers_label_is_left_for_the_guards() -> None:
    text, repairs = clean_turn("Recount.\nStudent: 17", "Teacher")
    assert text == "Recount.\nStudent: 17" and repairs == []


def test_a_transcript_is_its_text_for_dspys_adapters_and_keeps_its_turns() -> None:
    dialogue = _turns(("question", "Q?"), ("teacher", "Think."))
    assert dialogue == "Question: Q?\n\nTeacher: Think."
    for copied in (pickle.loads(pickle.dumps(dialogue)), copy.deepcopy(dialogue)):
        assert copied.turns == dialogue.turns and copied == dialogue


def test_replies_without_any_format_still_make_every_turn(fake_llm: FakeLLMServer) -> None:
    """A model that ignores formats (as small ones do) still yields a whole dialogue."""

    def responder(body: dict) -> str:
        teacher = "You are a teacher" in body["messages"][0]["content"]
        return ("Teacher: " if teacher else "") + "I think it is seventeen cows."

    fake_llm.responder = responder
    lms = dict(build_role_lms(RoleLMs.model_validate(role_lms(fake_llm.base_url)), None))
    with ledger() as book:
        turns = ErrorCorrection(lms)(question=QUESTION, reference=REFERENCE).turns
    assert [t["speaker"] for t in turns] == [
        "question",
        "weak_student",
        "teacher",
        "strong_student",
    ]
    assert turns[2]["text"] == "I think it is seventeen cows."  # the teacher's own prefix went
    assert [r.format for r in book.records] == [None, "repaired", None]


def test_chat_adapter_stays_selectable_and_its_parse_failures_are_counted(
    fake_llm: FakeLLMServer, tmp_path
) -> None:
    fake_llm.responder = lambda body: "no markers at all"
    lms = dict(
        build_role_lms(
            RoleLMs.model_validate(role_lms(fake_llm.base_url)), CallStore(tmp_path / "c")
        )
    )
    program = Debate(lms, adapters={"peer": "chat", "strong": "chat"})
    assert isinstance(program.student_a.adapter, dspy.ChatAdapter)
    with ledger() as book, pytest.raises(FormatError, match="student_a: no reply parsed"):
        program(question=QUESTION, reference=REFERENCE, rounds=1)
    assert any(r.format == "failed" for r in book.records)
    assert "[[ ## argument ## ]]" in str(fake_llm.requests[0]["messages"])
