"""Analogy (EP): the teacher explains the question without calculating, the student solves
it, then the fixed transition brings a retrieved similar question for the student to solve."""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from modules.agents import Agent, fixed_turn, transcript
from signatures import AnalogyStudentSolution, AnalogyTeacherExplanation

TRANSITION = "Good job, please take a look at this similar question."


class Analogy(dspy.Module):
    def __init__(self, lms: Mapping[str, dspy.LM] | None = None) -> None:
        super().__init__()
        lms = lms or {}
        self.teacher = Agent(AnalogyTeacherExplanation, "strong", "teacher", lms.get("strong"))
        # One Signature for both solutions: the paper's first and analogous prompts are the same.
        self.student = Agent(AnalogyStudentSolution, "strong", "strong_student", lms.get("strong"))

    def forward(
        self,
        question: str,
        reference: str,
        similar_question: str,
        similar_reference: str = "",
    ) -> dspy.Prediction:
        turns = [fixed_turn("question", question)]
        turns.append(self.teacher(question=question, reference=reference))
        turns.append(
            self.student(question=question, reference=reference, dialogue=transcript(turns))
        )
        turns.append(fixed_turn("teacher", f"{TRANSITION}\n\n{similar_question}"))
        turns.append(
            self.student(
                question=similar_question,
                reference=similar_reference or "(not given)",
                dialogue=transcript(turns),
            )
        )
        return dspy.Prediction(turns=turns)

    async def aforward(
        self,
        question: str,
        reference: str,
        similar_question: str,
        similar_reference: str = "",
    ) -> dspy.Prediction:
        turns = [fixed_turn("question", question)]
        turns.append(await self.teacher.acall(question=question, reference=reference))
        turns.append(
            await self.student.acall(
                question=question, reference=reference, dialogue=transcript(turns)
            )
        )
        turns.append(fixed_turn("teacher", f"{TRANSITION}\n\n{similar_question}"))
        turns.append(
            await self.student.acall(
                question=similar_question,
                reference=similar_reference or "(not given)",
                dialogue=transcript(turns),
            )
        )
        return dspy.Prediction(turns=turns)
