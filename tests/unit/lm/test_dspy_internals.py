"""DSPy internals in one place (modules/lm/dspy_internals.py): the patched hot spots give
exactly what DSPy's own code gives, and an untested DSPy version gets DSPy's plain path."""

from __future__ import annotations

import inspect

import dspy
import pytest
from dspy.adapters.chat_adapter import ChatAdapter
from dspy.adapters.json_adapter import JSONAdapter

import signatures.analogy
import signatures.debate
import signatures.error_correction
import signatures.judge
from modules.lm import dspy_internals


def _shipped_signatures() -> list[type[dspy.Signature]]:
    found = []
    for module in (
        signatures.analogy,
        signatures.debate,
        signatures.error_correction,
        signatures.judge,
    ):
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, dspy.Signature) and value.__module__ == module.__name__:
                found.append(value)
    return found


@pytest.mark.parametrize("adapter", [ChatAdapter, JSONAdapter])
def test_the_kept_system_message_is_dspys_own(adapter: type) -> None:
    original = dspy_internals._original_system_message
    shipped = _shipped_signatures()
    assert len(shipped) >= 8
    for signature in shipped:
        made = adapter().format_system_message(signature)
        assert made == original(adapter(), signature), signature.__name__
        assert adapter().format_system_message(signature) is made  # kept, not rebuilt


def test_new_instructions_get_a_new_system_message() -> None:
    """An optimizer rewrites instructions: the kept message must follow them."""
    signature = _shipped_signatures()[0]
    before = ChatAdapter().format_system_message(signature)
    rewritten = signature.with_instructions("Answer like a pirate.")
    after = ChatAdapter().format_system_message(rewritten)
    assert "Answer like a pirate." in after and "Answer like a pirate." not in before
    assert ChatAdapter().format_system_message(signature) == before


def test_another_adapter_is_never_served_a_kept_message() -> None:
    """A user's adapter may read its own state: its method runs on every call."""

    class Numbered(ChatAdapter):
        def __init__(self, tag: str) -> None:
            super().__init__()
            self.tag = tag

        def format_task_description(self, signature: type[dspy.Signature]) -> str:
            return f"[{self.tag}] " + super().format_task_description(signature)

    signature = _shipped_signatures()[0]
    assert "[one]" in Numbered("one").format_system_message(signature)
    assert "[two]" in Numbered("two").format_system_message(signature)


def test_the_cached_serializer_matches_dspys_own() -> None:
    """Prompts, and so cache keys, must not change: same output as DSPy's serialize_for_json."""
    import numpy as np
    from pydantic import BaseModel, TypeAdapter

    from modules.lm.dspy_internals import serialize_for_json

    class Point(BaseModel):
        x: int
        label: str

    def dspy_original(value: object) -> object:  # DSPy 3.4.1's body, verbatim
        try:
            return TypeAdapter(type(value)).dump_python(value, mode="json", fallback=str)
        except Exception:  # noqa: BLE001
            return str(value)

    values = ["plain", "", 3, 2.5, None, True, ["a", 1], {"k": [1, 2]}, Point(x=1, label="p")]
    values += [np.float32(1.5), {"n": np.int64(3)}, ("t", 1), object]
    for value in values:
        assert serialize_for_json(value) == dspy_original(value), value


def test_an_untested_dspy_version_gets_the_plain_path_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from modules.lm.openai_compat import serves

    monkeypatch.setattr(dspy, "__version__", "9.0.0")
    monkeypatch.setattr(dspy_internals, "_warned", False)
    assert not dspy_internals.tested_version()
    with caplog.at_level("WARNING"):
        assert serves("hosted_vllm/qwen") is False  # LiteLLM serves it instead, no crash
        assert serves("openai/gpt-4o-mini") is False
    warnings = [r for r in caplog.records if "not the tested" in r.getMessage()]
    assert len(warnings) == 1
    monkeypatch.setattr(dspy, "__version__", "3.4.1")
    assert serves("hosted_vllm/qwen") is True


def test_the_installed_dspy_is_the_tested_release_line() -> None:
    assert dspy_internals.tested_version(), dspy.__version__
    assert dspy_internals.installed()  # the fixtures' setup() patched it
