"""Analogy (EP): the teacher explains the question without calculating, the student solves
it, then the fixed transition brings a retrieved similar question for the student to solve."""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from modules.scenarios.agents import AdapterName, Script, Scripted, cast, fixed_turn, transcript
from signatures import AnalogyStudentSolution, AnalogyTeacherExplanation

TRANSITION = "Good job, please take a look at this similar question."


class Analogy(Scripted):
    def __init__(
        self,
        lms: Mapping[str, dspy.LM] | None = None,
        adapters: Mapping[str, AdapterName] | None = None,
    ) -> None:
        super().__init__()
        agent = cast(lms, adapters)
        self.teacher = agent(AnalogyTeacherExplanation, "strong", "teacher")
        # One Signature for both solutions: the paper's first and analogous prompts are the same.
        self.student = agent(AnalogyStudentSolution, "strong", "strong_student")

    def script(
        self,
        question: str,
        reference: str,
        similar_question: str,
        similar_reference: str = "",
    ) -> Script:
        turns = [fixed_turn("question", question)]
        explain = {"question": question, "reference": reference, "dialogue": transcript(turns)}
        turns.append((yield self.teacher, explain))
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
