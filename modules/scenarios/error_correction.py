"""Error correction (ME): a weak student errs, the teacher points at the errors without
giving the result, a strong student re-solves. Only the teacher and the strong student see
the reference."""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from modules.scenarios.agents import AdapterName, Script, Scripted, cast, fixed_turn, transcript
from signatures import StrongStudentRevision, TeacherCritique, WeakStudentAnswer


class ErrorCorrection(Scripted):
    def __init__(
        self,
        lms: Mapping[str, dspy.LM] | None = None,
        adapters: Mapping[str, AdapterName] | None = None,
    ) -> None:
        super().__init__()
        agent = cast(lms, adapters)
        self.weak_student = agent(WeakStudentAnswer, "weak", "weak_student")
        self.teacher = agent(TeacherCritique, "strong", "teacher")
        self.strong_student = agent(StrongStudentRevision, "strong", "strong_student")

    def script(self, question: str, reference: str) -> Script:
        turns = [fixed_turn("question", question)]
        asked = {"question": question, "dialogue": transcript(turns)}
        turns.append((yield self.weak_student, asked))
        for agent in (self.teacher, self.strong_student):
            said = {"question": question, "reference": reference, "dialogue": transcript(turns)}
            turns.append((yield agent, said))
        return turns
