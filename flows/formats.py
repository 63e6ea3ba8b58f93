"""Turns into training formats: ShareGPT conversations and OpenAI chat messages.

Teacher and question turns are `human`, student turns `gpt` (the paper's Figure 5). Debaters
A and B have no teacher between them; `alternate` (default) makes B the `human` side that A
answers, `final_only` folds the whole debate into the human turn so only C is trained on.
Consecutive turns of one side are merged, so messages strictly alternate user/assistant.
"""

from __future__ import annotations

from typing import Any

from modules.guards import SPEAKER_LABELS

_SIDE = {
    "question": "human",
    "teacher": "human",
    "weak_student": "gpt",
    "strong_student": "gpt",
    "student_c": "gpt",
}


def _side(speaker: str, mapping: str) -> str:
    if speaker in _SIDE:
        return _SIDE[speaker]
    if mapping == "final_only":
        return "human"
    return "gpt" if speaker == "student_a" else "human"


def to_sharegpt(turns: list[dict[str, Any]], mapping: str = "alternate") -> list[dict[str, str]]:
    labelled = mapping == "final_only"
    conversation: list[dict[str, str]] = []
    for turn in turns:
        side = _side(turn["speaker"], mapping)
        text = turn["text"]
        if labelled and turn["speaker"] in ("student_a", "student_b"):
            text = f"{SPEAKER_LABELS[turn['speaker']]}: {text}"
        if conversation and conversation[-1]["from"] == side:
            conversation[-1]["value"] += "\n\n" + text
        else:
            conversation.append({"from": side, "value": text})
    return conversation


def to_messages(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    return [{"role": role[m["from"]], "content": m["value"]} for m in conversation]


def alternates(messages: list[dict[str, str]]) -> bool:
    """True when messages are user/assistant alternating after an optional system message."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body or body[0]["role"] != "user":
        return False
    return all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(body))
