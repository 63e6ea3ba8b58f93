"""The verifier (the paper's Qwen2.5-32B check), as a Signature on the judge role."""

from typing import Literal

import dspy


class JudgeDialogue(dspy.Signature):
    """You are a strict teacher auditing a classroom dialogue written for training data.
    Compare the students' reasoning, and above all the final student turn, with the standard
    answer. Say whether the dialogue is correct or has procedural errors (wrong steps, wrong
    final result, a teacher who gives away the answer, a speaker who writes another's turn),
    score it from 1 (useless) to 5 (faithful and instructive), and give a one-sentence reason.
    Answer in English."""

    question: str = dspy.InputField(desc="the seed question")
    reference: str = dspy.InputField(desc="the standard answer")
    dialogue: str = dspy.InputField(desc="the whole dialogue, one turn per paragraph")
    verdict: Literal["correct", "procedural_errors"] = dspy.OutputField()
    score: int = dspy.OutputField(desc="1 to 5")
    reason: str = dspy.OutputField(desc="one sentence")
