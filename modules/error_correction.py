"""Error correction (ME): a weak student errs, the teacher points at the errors without
giving the result, a strong student re-solves. Only the teacher and the strong student see
the reference."""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from modules.agents import Agent, fixed_turn, transcript
from signatures import StrongStudentRevision, TeacherCritique, WeakStudentAnswer


class ErrorCorrection(dspy.Module):
    def __init__(self, lms: Mapping[str, dspy.LM] | None = None) -> None:
        super().__init__()
        lms = lms or {}
        self.weak_student = Agent(WeakStudentAnswer, "weak", "weak_student", lms.get("weak"))
        self.teacher = Agent(TeacherCritique, "strong", "teacher", lms.get("strong"))
        self.strong_student = Agent(
            StrongStudentRevision, "strong", "strong_student", lms.get("strong")
        )

    def forward(self, question: str, reference: str) -> dspy.Prediction:
        turns = [fixed_turn("question", question)]
        turns.append(self.weak_student(question=question))
        turns.append(
            self.teacher(question=question, reference=reference, dialogue=transcript(turns))
        )
        turns.append(
            self.strong_student(question=question, reference=reference, dialogue=transcript(turns))
        )
        return dspy.Prediction(turns=turns)

    async def aforward(self, question: str, reference: str) -> dspy.Prediction:
        turns = [fixed_turn("question", question)]
        turns.append(await self.weak_student.acall(question=question))
        turns.append(
            await self.teacher.acall(
                question=question, reference=reference, dialogue=transcript(turns)
            )
        )
        turns.append(
            await self.strong_student.acall(
                question=question, reference=reference, dialogue=transcript(turns)
            )
        )
        return dspy.Prediction(turns=turns)
