"""Turns into training formats: ShareGPT conversations and OpenAI chat messages.

Teacher and question turns are `human`, student turns `gpt` (the paper's Figure 5). Debaters
A and B have no teacher between them; `alternate` (default) makes B the `human` side that A
answers, `final_only` folds the whole debate into the human turn so only C is trained on.
Consecutive turns of one side are merged, so messages strictly alternate user/assistant.
"""

from __future__ import annotations

from typing import Any

from modules.scenarios.guards import DELIBERATELY_IMPERFECT, SPEAKER_LABELS

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


def assistant_weights(
    turns: list[dict[str, Any]], scenario: str, mapping: str = "alternate"
) -> list[int | None]:
    """Per message of `to_messages(to_sharegpt(turns, mapping))`: the training weight of an
    assistant message, 0 when every turn in it is deliberately imperfect (the weak student's
    first answer, debaters A and B), else 1; None for the other messages."""
    imperfect = DELIBERATELY_IMPERFECT.get(scenario, frozenset())
    sides: list[str] = []
    flawed: list[bool] = []
    first_said: set[str] = set()
    for turn in turns:
        speaker = turn["speaker"]
        side = _side(speaker, mapping)
        # error correction's weak student errs in its first answer only
        bad = speaker in imperfect and (speaker != "weak_student" or speaker not in first_said)
        first_said.add(speaker)
        if sides and sides[-1] == side:
            flawed[-1] = flawed[-1] and bad
        else:
            sides.append(side)
            flawed.append(bad)
    return [
        (0 if bad else 1) if side == "gpt" else None
        for side, bad in zip(sides, flawed, strict=True)
    ]


def message_speakers(turns: list[dict[str, Any]], mapping: str = "alternate") -> list[list[str]]:
    """Per message of `to_messages(to_sharegpt(turns, mapping))`: the speakers whose turns it
    holds, in order (consecutive turns of one side share a message)."""
    sides: list[str] = []
    groups: list[list[str]] = []
    for turn in turns:
        side = _side(turn["speaker"], mapping)
        if sides and sides[-1] == side:
            groups[-1].append(turn["speaker"])
        else:
            sides.append(side)
            groups.append([turn["speaker"]])
    return groups


def to_messages(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    return [{"role": role[m["from"]], "content": m["value"]} for m in conversation]


def alternates(messages: list[dict[str, str]]) -> bool:
    """True when messages are user/assistant alternating after an optional system message."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body or body[0]["role"] != "user":
        return False
    return all(m["role"] == ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(body))


def _turn(speaker: str, role: str | None, text: str) -> dict[str, Any]:
    return {"speaker": speaker, "role": role, "text": text, "finish_reason": None}


_LAYOUTS: dict[str, list[tuple[str, str | None]]] = {
    "error_correction": [
        ("question", None),
        ("weak_student", "weak"),
        ("teacher", "strong"),
        ("strong_student", "strong"),
    ],
}


def from_sharegpt(
    conversations: list[dict[str, str]], scenario: str | None = None, question: str | None = None
) -> list[dict[str, Any]]:
    """Speaker turns back from a ShareGPT conversation, so any dataset can be verified.

    Rows in one of our layouts get their speakers back (the teacher of error correction, the
    analogy teacher's explanation after the question); anything else becomes `user` and
    `assistant` turns after the first human turn, which is taken as the question."""
    body = [m for m in conversations if m.get("from") != "system"]
    sides = [m.get("from") for m in body]
    texts = [str(m.get("value") or "") for m in body]
    layout = _LAYOUTS.get(scenario or "")
    if layout and sides == ["human", "gpt", "human", "gpt"]:
        return [_turn(s, r, t) for (s, r), t in zip(layout, texts, strict=True)]
    if scenario == "analogy" and sides == ["human", "gpt", "human", "gpt"]:
        first = texts[0]
        if question and first.startswith(question.strip()):
            asked, explained = question.strip(), first[len(question.strip()) :].strip()
        else:
            asked, _, explained = first.partition("\n\n")
        return [
            _turn("question", None, asked),
            _turn("teacher", "strong", explained),
            _turn("strong_student", "strong", texts[1]),
            _turn("teacher", None, texts[2]),
            _turn("strong_student", "strong", texts[3]),
        ]
    if scenario == "debate" and len(sides) >= 2 and sides[0] == "human" and sides[-1] == "gpt":
        turns = [_turn("question", None, texts[0])]
        for i, (side, text) in enumerate(zip(sides[1:-1], texts[1:-1], strict=True)):
            expected = "gpt" if i % 2 == 0 else "human"
            if side != expected:
                break
            turns.append(_turn("student_a" if side == "gpt" else "student_b", "peer", text))
        else:
            return [*turns, _turn("student_c", "strong", texts[-1])]
    turns = []
    for i, (side, text) in enumerate(zip(sides, texts, strict=True)):
        if i == 0 and side == "human":
            turns.append(_turn("question", None, text))
        else:
            turns.append(_turn("assistant" if side == "gpt" else "user", "external", text))
    return turns
