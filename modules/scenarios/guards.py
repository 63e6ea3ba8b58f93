"""Turn guards: what makes a generated turn unusable, decided from its text alone.

Pure functions, so the checks are testable without a model and reusable by the verifier.
"""

from __future__ import annotations

import re

# A line that opens with another speaker's label is that speaker's turn written by the wrong agent.
_LABEL = re.compile(
    r"^\s*[\*#>\-\s]*(teacher|student(?:\s+[abc])?|assistant|user|human|gpt)\s*[\*]*\s*:",
    re.IGNORECASE | re.MULTILINE,
)

# Chat-template control tokens and DSPy field markers inside a turn: the model is writing the
# transcript's machinery (often because a seed told it to), not speaking its turn.
_CONTROL = re.compile(
    r"<\|(?:im_start|im_end|system|user|assistant|eot_id|endoftext|start_header_id)\|>"
    r"|\[\[ ## \w+ ## \]\]|</s>|\[/?INST\]"
)

SPEAKER_LABELS: dict[str, str] = {
    "question": "Question",
    "teacher": "Teacher",
    "weak_student": "Student",
    "strong_student": "Student",
    "student_a": "Student A",
    "student_b": "Student B",
    "student_c": "Student C",
}


#: Speakers whose turns are wrong on purpose, per scenario (the paper's weak agents): the judge
#: is told so, and publish.flawed_turns `mask` gives their training weight 0.
DELIBERATELY_IMPERFECT: dict[str, frozenset[str]] = {
    "error_correction": frozenset({"weak_student"}),
    "debate": frozenset({"student_a", "student_b"}),
}


def foreign_labels(text: str, speaker: str) -> list[str]:
    """Labels of other speakers that open a line of this turn (role leakage)."""
    own = SPEAKER_LABELS.get(speaker, "").lower()
    found = []
    for match in _LABEL.finditer(text):
        label = " ".join(match.group(1).lower().split())
        if label != own:
            found.append(label)
    return found


def control_tokens(text: str) -> list[str]:
    """Chat-template tokens or field markers in a turn (an injected or leaked transcript)."""
    return sorted({m.group(0) for m in _CONTROL.finditer(text)})


def turn_problems(text: str, speaker: str, finish_reason: str | None) -> list[str]:
    """Why a turn must be retried (empty, truncated, speaks for another role); [] if fine."""
    problems = []
    if not text.strip():
        problems.append("empty")
    if finish_reason == "length":
        problems.append("truncated")
    leaked = foreign_labels(text, speaker)
    if leaked:
        problems.append("role_leakage:" + ",".join(sorted(set(leaked))))
    if control_tokens(text):
        problems.append("control_tokens")
    return problems
