"""Analogy (EP): the teacher explains the question without calculating, the student solves
it, then the fixed transition brings a retrieved similar question for the student to solve."""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from modules.agents import Agent, Script, Scripted, fixed_turn, transcript
from signatures import AnalogyStudentSolution, AnalogyTeacherExplanation

TRANSITION = "Good job, please take a look at this similar question."


class Analogy(Scripted):
    def __init__(self, lms: Mapping[str, dspy.LM] | None = None) -> None:
        super().__init__()
        lms = lms or {}
        self.teacher = Agent(AnalogyTeacherExplanation, "strong", "teacher", lms.get("strong"))
        # One Signature for both solutions: the paper's first and analogous prompts are the same.
        self.student = Agent(AnalogyStudentSolution, "strong", "strong_student", lms.get("strong"))

    def script(
        self,
        question: str,
        reference: str,
        similar_question: str,
        similar_reference: str = "",
    ) -> Script:
        turns = [fixed_turn("question", question)]
        turns.append((yield self.teacher, {"question": question, "reference": reference}))
        solve = {"question": question, "reference": reference, "dialogue": transcript(turns)}
        turns.append((yield self.student, solve))
        turns.append(fixed_turn("teacher", f"{TRANSITION}\n\n{similar_question}"))
        solve_similar = {
            "question": similar_question,
            "reference": similar_reference or "(not given)",
            "dialogue": transcript(turns),
        }
        turns.append((yield self.student, solve_similar))
        return turns
