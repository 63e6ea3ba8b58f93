"""The verifier: the paper's Qwen2.5-32B check as a DSPy module on the judge role.

A Module (not a bare Predict) so optimizers and `named_predictors` see it like the scenario
programs, and so its instructions are versioned the same way.
"""

from __future__ import annotations

from typing import Any

import dspy

from modules.agents import transcript
from signatures import JudgeDialogue


class Judge(dspy.Module):
    def __init__(self, lm: dspy.LM | None = None) -> None:
        super().__init__()
        self.judge = dspy.Predict(JudgeDialogue)
        if lm is not None:
            self.judge.lm = lm

    def forward(
        self, question: str, reference: str, turns: list[dict[str, Any]]
    ) -> dspy.Prediction:
        return self.judge(question=question, reference=reference, dialogue=transcript(turns))

    async def aforward(
        self, question: str, reference: str, turns: list[dict[str, Any]]
    ) -> dspy.Prediction:
        """forward on the event loop: the same request, awaited."""
        return await self.judge.acall(
            question=question, reference=reference, dialogue=transcript(turns)
        )
