"""An agent: one role's LM, one phase's Signature, a speaker name, and the turn guard.

The paper's agent is A = (L, P_R): a model plus a role- and phase-specific prompt. Here the
prompt is a DSPy Signature (so optimizers can rewrite it) and the model is the role's dspy.LM.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import dspy

from modules.callcache import current_ledger, rollout
from modules.guards import SPEAKER_LABELS, turn_problems


class Agent(dspy.Module):
    """Speaks one turn; a bad turn is retried once in a fresh rollout slot, then flagged."""

    def __init__(
        self,
        signature: type[dspy.Signature],
        role: str,
        speaker: str,
        lm: dspy.LM | None = None,
        retries: int = 1,
    ) -> None:
        super().__init__()
        self.predict = dspy.Predict(signature)
        if lm is not None:
            self.predict.lm = lm
        self.role = role
        self.speaker = speaker
        self.retries = retries
        self.output_field = next(iter(signature.output_fields))

    def forward(self, **inputs: Any) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            with rollout(attempt):
                prediction = self.predict(**inputs)
            text, finish, problems = self._judge(prediction)
            if not problems:
                break
        return self._turn(text, finish, problems)

    async def aforward(self, **inputs: Any) -> dict[str, Any]:
        """The same turn on the event loop: the LM call is awaited, not run in a thread."""
        for attempt in range(self.retries + 1):
            with rollout(attempt):
                prediction = await self.predict.acall(**inputs)
            text, finish, problems = self._judge(prediction)
            if not problems:
                break
        return self._turn(text, finish, problems)

    def _judge(self, prediction: dspy.Prediction) -> tuple[str, str | None, list[str]]:
        text = str(getattr(prediction, self.output_field, "") or "").strip()
        book = current_ledger()
        finish = book.last.finish_reason if book and book.last else None
        return text, finish, turn_problems(text, self.speaker, finish)

    def _turn(self, text: str, finish: str | None, problems: list[str]) -> dict[str, Any]:
        lm = self.predict.lm
        return {
            "speaker": self.speaker,
            "role": self.role,
            "text": text,
            "model": getattr(lm, "model", None),
            "temperature": (lm.kwargs.get("temperature") if lm is not None else None),
            "finish_reason": finish,
            "flags": problems,
        }


def fixed_turn(speaker: str, text: str) -> dict[str, Any]:
    """A turn no model wrote (the question, the analogy transition)."""
    return {
        "speaker": speaker,
        "role": None,
        "text": text,
        "model": None,
        "temperature": None,
        "finish_reason": None,
        "flags": [],
    }


def transcript(turns: list[dict[str, Any]]) -> str:
    """The dialogue so far as the next agent reads it: one labelled paragraph per turn."""
    return "\n\n".join(
        f"{SPEAKER_LABELS.get(t['speaker'], t['speaker'].title())}: {t['text']}" for t in turns
    )


#: A scenario's turns written once: it yields (agent, inputs) for each model turn, is sent the
#: turn back, and returns the dialogue's turns.
Script = Generator[tuple[Agent, dict[str, Any]], dict[str, Any], list[dict[str, Any]]]


class Scripted(dspy.Module):
    """A scenario program whose `script` is played by both `forward` and `aforward`, so the
    threaded and the event-loop paths can never drift apart (same turns, same requests)."""

    def script(self, **inputs: Any) -> Script:
        raise NotImplementedError

    def forward(self, **inputs: Any) -> dspy.Prediction:
        play = self.script(**inputs)
        try:
            agent, kwargs = next(play)
            while True:
                agent, kwargs = play.send(agent(**kwargs))
        except StopIteration as done:
            return dspy.Prediction(turns=done.value)

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        play = self.script(**inputs)
        try:
            agent, kwargs = next(play)
            while True:
                agent, kwargs = play.send(await agent.acall(**kwargs))
        except StopIteration as done:
            return dspy.Prediction(turns=done.value)
