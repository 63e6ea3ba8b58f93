"""Error correction (ME): a weak student errs, the teacher points at the errors without
giving the result, a strong student re-solves. Only the teacher and the strong student see
the reference."""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from modules.agents import Agent, Script, Scripted, fixed_turn, transcript
from signatures import StrongStudentRevision, TeacherCritique, WeakStudentAnswer


class ErrorCorrection(Scripted):
    def __init__(self, lms: Mapping[str, dspy.LM] | None = None) -> None:
        super().__init__()
        lms = lms or {}
        self.weak_student = Agent(WeakStudentAnswer, "weak", "weak_student", lms.get("weak"))
        self.teacher = Agent(TeacherCritique, "strong", "teacher", lms.get("strong"))
        self.strong_student = Agent(
            StrongStudentRevision, "strong", "strong_student", lms.get("strong")
        )

    def script(self, question: str, reference: str) -> Script:
        turns = [fixed_turn("question", question)]
        turns.append((yield self.weak_student, {"question": question}))
        for agent in (self.teacher, self.strong_student):
            said = {"question": question, "reference": reference, "dialogue": transcript(turns)}
            turns.append((yield agent, said))
        return turns
