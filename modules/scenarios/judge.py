"""The verifier: the paper's Qwen2.5-32B check as a DSPy module on the judge role.

A Module (not a bare Predict) so optimizers and `named_predictors` see it like the scenario
programs, and so its instructions are versioned the same way.

The judge knows the script: it is told the scenario, which turns are wrong on purpose (the weak
student's first answer, debaters A and B), that a teacher must not reveal the result, and in
analogy the similar question's own reference; those turns are marked in the dialogue it reads.

It parses robustly: with ``structured_output`` (the endpoint honours a JSON schema in
``response_format``), the reply is constrained to the verdict's schema (``SchemaAdapter``);
otherwise DSPy's ChatAdapter asks for field markers and falls back to its JSONAdapter. A reply
that still does not parse is retried once in a fresh rollout slot; after that the verdict is
``unjudged`` with its reason: counted and reported, never a silent pass or fail.

Example:
    ```python
    judge = Judge(lm, structured_output=True)
    pred = judge(question=q, reference=r, turns=turns, scenario="error_correction")
    pred.verdict  # "correct", "procedural_errors" or "unjudged"
    ```
"""

from __future__ import annotations

from typing import Any, get_args

import dspy
from dspy.utils.exceptions import AdapterParseError

from modules.lm.call_cache import note_format
from modules.lm.dspy_internals import SchemaAdapter
from modules.scenarios.agents import speaking
from modules.scenarios.guards import DELIBERATELY_IMPERFECT
from modules.scenarios.turn_adapter import speaker_label
from signatures import JudgeDialogue

UNJUDGED = "unjudged"


_SCRIPTS: dict[str, str] = {
    "error_correction": (
        "Error correction. A weak student answers first and is MEANT to make mistakes: that "
        "first student turn is deliberately imperfect and its errors must not count against "
        "the dialogue. The teacher then points at the mistakes and explains the right "
        "reasoning without giving the final result or doing the calculation. The final "
        "student turn solves the question again and must agree with the standard answer."
    ),
    "debate": (
        "Debate. Student A and Student B are weak students arguing about the question: their "
        "turns are deliberately imperfect and may be wrong; their errors must not count "
        "against the dialogue. Student C, who knows the standard answer, closes the debate: "
        "Student C's final answer must agree with the standard answer."
    ),
    "analogy": (
        "Analogy. The teacher explains the question and an approach without calculating and "
        "without giving the result. The student solves the question; its answer must agree "
        "with the standard answer. The teacher then brings a similar question, which the "
        "student solves too; that last answer must agree with the similar question's own "
        "standard answer: {similar_reference}"
    ),
}
_UNKNOWN_SCRIPT = (
    "The scenario is not known: every student turn should be correct, and the final student "
    "turn must agree with the standard answer. A teacher must not give away the final result."
)


def script_brief(scenario: str | None, similar_reference: str = "") -> str:
    """What the judge is told about how a dialogue of this scenario is meant to go."""
    text = _SCRIPTS.get(scenario or "", _UNKNOWN_SCRIPT)
    return text.format(similar_reference=similar_reference.strip() or "(not given)")


def judge_transcript(turns: list[dict[str, Any]], scenario: str | None) -> str:
    """The dialogue as the judge reads it: numbered turns, deliberately imperfect ones marked."""
    imperfect = DELIBERATELY_IMPERFECT.get(scenario or "", frozenset())
    lines = []
    for n, turn in enumerate(turns, start=1):
        label = speaker_label(turn["speaker"])
        if turn["speaker"] in imperfect:
            label += " (deliberately imperfect: mistakes here are intended)"
        lines.append(f"[{n}] {label}: {turn['text']}")
    return "\n\n".join(lines)


def judge_inputs(
    question: str,
    reference: str,
    turns: list[dict[str, Any]],
    scenario: str | None = None,
    similar_reference: str = "",
) -> dict[str, str]:
    """The JudgeDialogue inputs for one dialogue."""
    return {
        "script": script_brief(scenario, similar_reference),
        "question": question,
        "reference": reference,
        "dialogue": judge_transcript(turns, scenario),
    }


class Judge(dspy.Module):
    """Args:
    lm: the judge role's LM (None: DSPy's configured LM).
    structured_output: the endpoint honours a JSON schema in ``response_format``.
    retries: further tries, each in a fresh rollout slot, for a reply that does not parse.
    """

    def __init__(
        self, lm: dspy.LM | None = None, structured_output: bool = False, retries: int = 1
    ) -> None:
        super().__init__()
        self.judge = dspy.Predict(JudgeDialogue)
        if lm is not None:
            self.judge.lm = lm
        self.lm = lm  # kept when an optimizer resets the predictor (see scenarios/agents.py)
        self.adapter: dspy.Adapter = SchemaAdapter() if structured_output else dspy.ChatAdapter()
        self.retries = retries

    def forward(
        self,
        question: str,
        reference: str,
        turns: list[dict[str, Any]],
        scenario: str | None = None,
        similar_reference: str = "",
    ) -> dspy.Prediction:
        inputs = judge_inputs(question, reference, turns, scenario, similar_reference)
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            with speaking(self.judge, self.adapter, attempt):
                try:
                    return _checked(self.judge(**inputs, lm=self.judge.lm or self.lm))
                except (AdapterParseError, BadVerdict) as exc:
                    note_format("failed")
                    error = exc
        return self._unjudged(error)

    async def aforward(
        self,
        question: str,
        reference: str,
        turns: list[dict[str, Any]],
        scenario: str | None = None,
        similar_reference: str = "",
    ) -> dspy.Prediction:
        """forward on the event loop: the same requests, awaited."""
        inputs = judge_inputs(question, reference, turns, scenario, similar_reference)
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            with speaking(self.judge, self.adapter, attempt):
                try:
                    return _checked(await self.judge.acall(**inputs, lm=self.judge.lm or self.lm))
                except (AdapterParseError, BadVerdict) as exc:
                    note_format("failed")
                    error = exc
        return self._unjudged(error)

    def _unjudged(self, error: Exception | None) -> dspy.Prediction:
        said = " ".join(str(getattr(error, "lm_response", None) or error or "").split())
        reason = (
            f"the judge's reply did not parse with {type(self.adapter).__name__} in "
            f"{self.retries + 1} tries (last reply: {said[:120]!r})"
        )
        return dspy.Prediction(verdict=UNJUDGED, score=None, reason=reason)


_VERDICTS = frozenset(get_args(JudgeDialogue.output_fields["verdict"].annotation))


class BadVerdict(ValueError):
    """A reply that parsed but whose verdict or score is out of range."""


def _checked(pred: dspy.Prediction) -> dspy.Prediction:
    """A parsed verdict, or BadVerdict when a field is missing or out of range."""
    if pred.verdict not in _VERDICTS:
        raise BadVerdict(f"verdict {pred.verdict!r} is not one of {sorted(_VERDICTS)}")
    if not isinstance(pred.score, int) or not 1 <= pred.score <= 5:
        raise BadVerdict(f"score {pred.score!r} is not an integer from 1 to 5")
    return pred
