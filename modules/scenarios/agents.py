"""An agent: one role's LM, one phase's Signature, a speaker name, and the turn guard.

The paper's agent is A = (L, P_R): a model plus a role- and phase-specific prompt. Here the
prompt is a DSPy Signature (so optimizers can rewrite it) and the model is the role's dspy.LM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, Literal

import dspy
from dspy.utils.exceptions import AdapterParseError

from modules.lm.call_cache import current_ledger, note_format, prompt_sha, rollout
from modules.scenarios.guards import turn_problems
from modules.scenarios.turn_adapter import Transcript, TurnAdapter, speaker_label

#: How an agent's call is formatted: "turn" (TurnAdapter, the paper's chat transport) or
#: "chat" (DSPy's ChatAdapter with its field markers, kept for comparison).
AdapterName = Literal["turn", "chat"]


@contextlib.contextmanager
def speaking(predict: dspy.Predict, adapter: dspy.Adapter, attempt: int) -> Iterator[None]:
    """One try of a predictor: its own rollout slot (a retry is a fresh sample), its prompt's
    hash stored with the cache entry, and its adapter."""
    with rollout(attempt, prompt_sha(predict)), dspy.context(adapter=adapter):
        yield


class FormatError(RuntimeError):
    """A turn whose reply never parsed, after the retry: the dialogue cannot go on."""


def make_adapter(name: AdapterName, speaker: str) -> dspy.Adapter:
    if name == "chat":
        return dspy.ChatAdapter()
    return TurnAdapter(speaker_label(speaker))


class Agent(dspy.Module):
    """Speaks one turn; a bad turn (or a reply that does not parse) is retried once in a fresh
    rollout slot, then flagged (or, unparsed, fails the dialogue with a FormatError)."""

    def __init__(
        self,
        signature: type[dspy.Signature],
        role: str,
        speaker: str,
        lm: dspy.LM | None = None,
        retries: int = 1,
        adapter: AdapterName = "turn",
    ) -> None:
        super().__init__()
        self.predict = dspy.Predict(signature)
        if lm is not None:
            self.predict.lm = lm
        # The role's LM, kept beside the predictor's: DSPy's optimizers reset the predictors
        # of the programs they compile (Predict.reset sets lm to None), and the agent still
        # speaks on its role's model. A predictor's own LM, if set, wins.
        self.lm = lm
        self.role = role
        self.speaker = speaker
        self.retries = retries
        self.adapter = make_adapter(adapter, speaker)
        self.output_field = next(iter(signature.output_fields))

    def forward(self, **inputs: Any) -> dict[str, Any]:
        said, error = None, None
        for attempt in range(self.retries + 1):
            with speaking(self.predict, self.adapter, attempt):
                try:
                    prediction = self.predict(**inputs, lm=self._lm())
                except AdapterParseError as exc:
                    note_format("failed")
                    error = exc
                    continue
            said = self._judge(prediction)
            if not said[2]:
                break
        return self._turn(*self._parsed(said, error))

    async def aforward(self, **inputs: Any) -> dict[str, Any]:
        """The same turn on the event loop: the LM call is awaited, not run in a thread."""
        said, error = None, None
        for attempt in range(self.retries + 1):
            with speaking(self.predict, self.adapter, attempt):
                try:
                    prediction = await self.predict.acall(**inputs, lm=self._lm())
                except AdapterParseError as exc:
                    note_format("failed")
                    error = exc
                    continue
            said = self._judge(prediction)
            if not said[2]:
                break
        return self._turn(*self._parsed(said, error))

    def _lm(self) -> dspy.LM | None:
        return self.predict.lm or self.lm

    def _parsed(
        self, said: tuple[str, str | None, list[str]] | None, error: AdapterParseError | None
    ) -> tuple[str, str | None, list[str]]:
        """The last turn that parsed; none did: the dialogue fails with a FormatError."""
        if said is not None:
            return said
        reply = " ".join(str(getattr(error, "lm_response", "") or "").split())[:120]
        raise FormatError(
            f"{self.speaker}: no reply parsed with {type(self.adapter).__name__} in "
            f"{self.retries + 1} tries (last reply: {reply!r})"
        )

    def _judge(self, prediction: dspy.Prediction) -> tuple[str, str | None, list[str]]:
        text = str(getattr(prediction, self.output_field, "") or "").strip()
        book = current_ledger()
        finish = book.last.finish_reason if book and book.last else None
        return text, finish, turn_problems(text, self.speaker, finish)

    def _turn(self, text: str, finish: str | None, problems: list[str]) -> dict[str, Any]:
        lm = self._lm()
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


def transcript(turns: list[dict[str, Any]]) -> Transcript:
    """The dialogue so far as the next agent reads it: one labelled paragraph per turn, with
    the turns kept for adapters that send them as chat history."""
    return Transcript.of(turns)


def cast(
    lms: Mapping[str, dspy.LM] | None, adapters: Mapping[str, AdapterName] | None
) -> Callable[[type[dspy.Signature], str, str], Agent]:
    """A program's casting call: agent(signature, role, speaker) gets the role's LM and adapter
    ("turn" unless the role's settings choose "chat"). Neither is stored on the program."""
    lms, adapters = dict(lms or {}), dict(adapters or {})

    def agent(signature: type[dspy.Signature], role: str, speaker: str) -> Agent:
        return Agent(signature, role, speaker, lms.get(role), adapter=adapters.get(role, "turn"))

    return agent


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
