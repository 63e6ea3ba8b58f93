"""GBNF grammars from the output fields a DSPy ChatAdapter prompt asks for.

A 135M model never follows DSPy's ``[[ ## field ## ]]`` format by itself; constrained to a
grammar built from the requested fields, every call parses. The fields are read back from
the rendered system message, so the engine needs nothing but the request it is given.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_OUTPUT_BLOCK = re.compile(
    r"Your output fields are:\n(?P<block>.*?)\n(?:All interactions will be structured|$)", re.S
)
_FIELD_LINE = re.compile(r"^\d+\. `(?P<name>\w+)` \((?P<type>.*?)\)(?::|$)", re.M)


#: The end marker of a ChatAdapter reply: a system message that names it asks for field markers.
CHAT_COMPLETED = "[[ ## completed ## ]]"


@dataclass(frozen=True)
class OutputField:
    name: str
    type: str  # as DSPy renders it: str, int, float, bool, Literal['a', 'b'], ...

    def literal_choices(self) -> list[str] | None:
        if not self.type.startswith("Literal[") or not self.type.endswith("]"):
            return None
        try:
            values = ast.literal_eval("[" + self.type[len("Literal[") : -1] + "]")
        except (ValueError, SyntaxError):
            return None
        return [str(v) for v in values]

    def default_value(self) -> str:
        """What closes a field that a truncated answer never reached (the turn is then flagged)."""
        choices = self.literal_choices()
        if choices:
            return choices[0]
        return {"int": "0", "float": "0", "bool": "False"}.get(self.type, "")


def output_fields(system_text: str) -> list[OutputField]:
    """The output fields declared in a ChatAdapter system message, in order."""
    match = _OUTPUT_BLOCK.search(system_text)
    if not match:
        return []
    return [
        OutputField(m.group("name"), m.group("type").strip())
        for m in _FIELD_LINE.finditer(match.group("block"))
    ]


def _lit(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _value_rule(field: OutputField) -> str:
    choices = field.literal_choices()
    if choices:
        return " | ".join(_lit(c) for c in choices)
    if field.type == "int":
        return '"-"? [0-9] [0-9]? [0-9]? [0-9]?'
    if field.type == "float":
        return '"-"? [0-9] [0-9]? [0-9]? ("." [0-9] [0-9]?)?'
    if field.type == "bool":
        return '"True" | "False"'
    return "text"


def header(name: str) -> str:
    return f"[[ ## {name} ## ]]"


def gbnf_for(fields: list[OutputField]) -> str:
    """A grammar that admits exactly: each field's header, a value of its type, the end marker.

    Free text may not start with whitespace (no empty answers) and may not contain ``[[``
    (so a value can never forge the next field's header).
    """
    parts = []
    rules = []
    for i, field in enumerate(fields):
        sep = "" if i == 0 else "\\n\\n"
        parts.append(f'"{sep}{header(field.name)}\\n" f{i}')
        rules.append(f"f{i} ::= {_value_rule(field)}")
    parts.append(f'"\\n\\n{header("completed")}"')
    root = "root ::= " + " ".join(parts)
    text = 'text ::= [^\\[#{ \\t\\n] ([^\\[#\\n] | "\\n" [^\\[#\\n] | "[" [^\\[#\\n])*'
    return "\n".join([root, *rules, text])


def _valid(field: OutputField, value: str) -> bool:
    choices = field.literal_choices()
    if choices:
        return value in choices
    if field.type == "int":
        return re.fullmatch(r"-?\d+", value) is not None
    if field.type == "float":
        return re.fullmatch(r"-?\d+(\.\d+)?", value) is not None
    if field.type == "bool":
        return value in ("True", "False")
    return True


def close_truncated(text: str, fields: list[OutputField]) -> str:
    """Rebuild a cut-off answer so DSPy can parse what was written.

    Complete values are kept; a typed value cut mid-way, or a field never reached, gets its
    type's default. Only the structure is repaired: the response keeps finish_reason
    "length", so the turn guards still see and flag the truncation.
    """
    values: dict[str, str] = {}
    for i, field in enumerate(fields):
        marker = header(field.name)
        at = text.find(marker)
        if at < 0:
            break
        rest = text[at + len(marker) :]
        nxt = header(fields[i + 1].name) if i + 1 < len(fields) else header("completed")
        end = rest.find(nxt)
        value = rest if end < 0 else rest[:end]
        values[field.name] = value.split("[[", 1)[0].strip()
    if not values and fields and "[[" not in text:
        values[fields[0].name] = text.strip()  # the model never wrote the first header
    out = []
    for field in fields:
        value = values.get(field.name, "")
        if not value or not _valid(field, value):
            value = field.default_value() if field.type != "str" else value
        out.append(f"{header(field.name)}\n{value}")
    out.append(header("completed"))
    return "\n\n".join(out)
