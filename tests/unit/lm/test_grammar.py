"""Grammar-constrained decoding: fields read from DSPy's own prompt, grammars that compile."""

from __future__ import annotations

import dspy
import pytest
from llama_cpp import LlamaGrammar

from modules.lm.grammar import close_truncated, gbnf_for, output_fields
from signatures import JudgeDialogue, WeakStudentAnswer


def _system(signature: type[dspy.Signature]) -> str:
    inputs = {name: "x" for name in signature.input_fields}
    return dspy.ChatAdapter().format(signature, demos=[], inputs=inputs)[0]["content"]


def test_output_fields_are_read_from_the_chat_adapter_prompt() -> None:
    fields = output_fields(_system(JudgeDialogue))
    assert [(f.name, f.type) for f in fields] == [
        ("verdict", "Literal['correct', 'procedural_errors']"),
        ("score", "int"),
        ("reason", "str"),
    ]
    assert fields[0].literal_choices() == ["correct", "procedural_errors"]
    assert output_fields("no fields here") == []


@pytest.mark.parametrize("signature", [JudgeDialogue, WeakStudentAnswer])
def test_grammar_compiles_in_llama_cpp(signature: type[dspy.Signature]) -> None:
    grammar = gbnf_for(output_fields(_system(signature)))
    assert LlamaGrammar.from_string(grammar, verbose=False) is not None


def test_a_truncated_answer_is_closed_so_dspy_parses_it() -> None:
    fields = output_fields(_system(JudgeDialogue))
    cut = "[[ ## verdict ## ]]\ncorrect\n\n[[ ## score ## ]]\n4\n\n[[ ## reason ## ]]\nThe stu"
    parsed = dspy.ChatAdapter().parse(JudgeDialogue, close_truncated(cut, fields))
    assert parsed == {"verdict": "correct", "score": 4, "reason": "The stu"}
    empty = dspy.ChatAdapter().parse(JudgeDialogue, close_truncated("", fields))
    assert empty["verdict"] == "correct" and empty["score"] == 0


@pytest.mark.parametrize(
    "cut",
    [
        "[[ ## verdict ## ]]\nproced",
        "[[ ## verdict ## ]]\ncorrect\n\n[[ ## sco",
        "[[ ## verdict ## ]]\ncorrect\n\n[[ ## score ## ]]\n",
        "[[ ## ver",
        "",
    ],
)
def test_every_cut_point_still_parses(cut: str) -> None:
    fields = output_fields(_system(JudgeDialogue))
    parsed = dspy.ChatAdapter().parse(JudgeDialogue, close_truncated(cut, fields))
    assert parsed["verdict"] in ("correct", "procedural_errors")
    assert isinstance(parsed["score"], int)
