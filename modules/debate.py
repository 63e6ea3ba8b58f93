"""Debate (DB): peers A and B argue for one or two rounds without the reference; strong
student C, who has it, settles the question in a summary that agrees with it."""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from modules.agents import Agent, Script, Scripted, fixed_turn, transcript
from signatures import DebaterTurn, DebateSummary


class Debate(Scripted):
    def __init__(self, lms: Mapping[str, dspy.LM] | None = None) -> None:
        super().__init__()
        lms = lms or {}
        # A and B share one Signature (the paper: identical prompts but the name).
        self.student_a = Agent(DebaterTurn, "peer", "student_a", lms.get("peer"))
        self.student_b = Agent(DebaterTurn, "peer", "student_b", lms.get("peer"))
        self.student_c = Agent(DebateSummary, "strong", "student_c", lms.get("strong"))

    def script(self, question: str, reference: str, rounds: int = 1) -> Script:
        if rounds not in (1, 2):
            raise ValueError("a debate has 1 or 2 rounds")
        turns = [fixed_turn("question", question)]
        debate: list[dict] = []
        for _ in range(rounds):
            for name, agent in (("Student A", self.student_a), ("Student B", self.student_b)):
                so_far = transcript(debate) or "(nobody has spoken yet)"
                debate.append(
                    (yield agent, {"student_name": name, "question": question, "dialogue": so_far})
                )
        summary = {"question": question, "reference": reference, "dialogue": transcript(debate)}
        return [*turns, *debate, (yield self.student_c, summary)]
