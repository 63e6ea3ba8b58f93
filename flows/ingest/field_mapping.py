"""Field mappings: one raw row of a known shape into (question, reference, meta).

The shapes users have: question/answer (GSM8K, Orca-Math, ProcQA), Alpaca (instruction +
input -> question, output -> reference), Self-Instruct (instruction + instances) and ShareGPT
conversations (OpenHermes). Every field name can be overridden per source, since community
uploads of one dataset rarely agree on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flows.core.config import DEFAULT_FIELDS, REQUIRED, SourceFormat

_GSM8K_FINAL = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)
_HUMAN = {"human", "user"}
_GPT = {"gpt", "assistant", "model"}


class Skip(ValueError):
    """A well-formed row of a shape the pipeline does not take (counted, not an error)."""


def field_names(fmt: SourceFormat, overrides: Mapping[str, str]) -> dict[str, str]:
    unknown = set(overrides) - set(DEFAULT_FIELDS[fmt])
    if unknown:
        raise KeyError(
            f"unknown field role(s) {sorted(unknown)} for format {fmt} "
            f"(known: {sorted(DEFAULT_FIELDS[fmt])})"
        )
    return {**DEFAULT_FIELDS[fmt], **overrides}


def missing_columns(fmt: SourceFormat, names: Mapping[str, str], columns: set[str]) -> list[str]:
    """The mapped column names a source does not have (checked on its first row). An optional
    role with no default column (a question_answer `title`) is required once it is mapped."""
    mapped = [r for r, default in DEFAULT_FIELDS[fmt].items() if not default and names[r]]
    return [names[r] for r in (*REQUIRED[fmt], *mapped) if names[r] not in columns]


def _text(row: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise ValueError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} is a {type(value).__name__}, expected text")
    return value


def _join(instruction: str, extra: str) -> str:
    return f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction


def _sharegpt(turns: Any) -> tuple[str, str]:
    if not isinstance(turns, list) or not all(isinstance(t, Mapping) for t in turns):
        raise ValueError("conversations must be a list of {from, value} objects")
    system = ""
    rest = list(turns)
    if rest and rest[0].get("from") == "system":
        system = str(rest.pop(0).get("value") or "")
    if len(rest) < 2 or rest[0].get("from") not in _HUMAN or rest[1].get("from") not in _GPT:
        raise Skip("conversation does not start with a human turn followed by a gpt turn")
    human, gpt = rest[0].get("value"), rest[1].get("value")
    if not isinstance(human, str) or not isinstance(gpt, str):
        raise ValueError("conversation turn values must be text")
    return (_join(system, human) if system.strip() else human), gpt


def map_row(
    row: Mapping[str, Any], fmt: SourceFormat, names: Mapping[str, str]
) -> tuple[str, str, dict[str, Any]]:
    """(question, reference, meta) of one row; ValueError (or Skip) says why it cannot be."""
    meta: dict[str, Any] = {}
    if fmt == "question_answer":
        question, reference = _text(row, names["question"]), _text(row, names["answer"])
        if names["title"]:
            question = _join(_text(row, names["title"], False), question).strip()
        final = _GSM8K_FINAL.findall(reference)
        if final:
            meta["final_answer"] = final[-1].replace(",", "").strip()
    elif fmt == "alpaca":
        question = _join(_text(row, names["instruction"]), _text(row, names["input"], False))
        reference = _text(row, names["output"])
    elif fmt == "self_instruct":
        instances = row.get(names["instances"])
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise ValueError(f"field {names['instances']!r} must be a list of {{input, output}}")
        first = instances[0]
        question = _join(_text(row, names["instruction"]), _text(first, "input", False))
        reference = _text(first, "output")
    else:
        question, reference = _sharegpt(row.get(names["conversations"]))
    if not question.strip():
        raise ValueError("empty question")
    if not reference.strip():
        raise ValueError("empty reference")
    return question, reference, meta
