"""The verifier (the paper's Qwen2.5-32B check), as a Signature on the judge role."""

from typing import Literal

import dspy


class JudgeDialogue(dspy.Signature):
    """You are a strict teacher auditing a classroom dialogue written for training data.
    Read the script first: it says how the dialogue is meant to go, and which turns are
    deliberately imperfect (a weak student's first attempt, debaters arguing). Those turns are
    meant to contain mistakes: never count their mistakes against the dialogue. Judge the
    turns that must be right: the final student turn must agree with the standard answer,
    a teacher must guide without giving away the final result, and no speaker may write
    another speaker's turn. Say whether the dialogue is correct or has procedural errors,
    score it from 1 (useless) to 5 (faithful and instructive), and give a one-sentence reason.
    Answer in English."""

    script: str = dspy.InputField(
        desc="how this dialogue is meant to go, and which turns are deliberately imperfect"
    )
    question: str = dspy.InputField(desc="the seed question")
    reference: str = dspy.InputField(desc="the standard answer")
    dialogue: str = dspy.InputField(
        desc="the whole dialogue, one numbered turn per paragraph, deliberately imperfect "
        "turns marked"
    )
    verdict: Literal["correct", "procedural_errors"] = dspy.OutputField()
    score: int = dspy.OutputField(desc="1 to 5")
    reason: str = dspy.OutputField(desc="one sentence")
