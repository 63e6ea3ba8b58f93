"""Debate (DB): peers A and B argue for one or two rounds without the reference; strong
student C, who has it, settles the question in a summary that agrees with it."""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from modules.scenarios.agents import AdapterName, Script, Scripted, cast, fixed_turn, transcript
from signatures import DebaterTurn, DebateSummary


class Debate(Scripted):
    def __init__(
        self,
        lms: Mapping[str, dspy.LM] | None = None,
        adapters: Mapping[str, AdapterName] | None = None,
    ) -> None:
        super().__init__()
        agent = cast(lms, adapters)
        # A and B share one Signature (the paper: identical prompts but the name).
        self.student_a = agent(DebaterTurn, "peer", "student_a")
        self.student_b = agent(DebaterTurn, "peer", "student_b")
        self.student_c = agent(DebateSummary, "strong", "student_c")

    def script(self, question: str, reference: str, rounds: int = 1) -> Script:
        if rounds not in (1, 2):
            raise ValueError("a debate has 1 or 2 rounds")
        turns = [fixed_turn("question", question)]
        for _ in range(rounds):
            for name, agent in (("Student A", self.student_a), ("Student B", self.student_b)):
                said = {"student_name": name, "question": question, "dialogue": transcript(turns)}
                turns.append((yield agent, said))
        summary = {"question": question, "reference": reference, "dialogue": transcript(turns)}
        turns.append((yield self.student_c, summary))
        return turns
