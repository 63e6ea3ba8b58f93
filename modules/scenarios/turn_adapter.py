"""The agents' wire format: the paper's chat transport, read back as one turn.

Every agent Signature has one output field, the turn. ``TurnAdapter`` sends what the paper's
agents receive: the role's instructions and the inputs it needs as the system message, the
dialogue so far as chat history (this speaker's own earlier turns as ``assistant``, everyone
else's as ``user``, each prefixed with its speaker's name), and reads the whole completion back
as the turn. It asks the model for no markers, so a small model that never follows DSPy's
``[[ ## field ## ]]`` format still produces a turn; stray field markers, chat-template tokens
and a leading speaker name are stripped (``clean_turn``), and the turn guards and quality
checks judge what is left. DSPy's ChatAdapter stays selectable per role (``adapter: chat``).

It is a real ``dspy.Adapter``: optimizers' rewritten instructions and bootstrapped demos reach
the prompt (demos as worked examples in the system message), and ``master show-prompts``
renders it.

Example:
    ```python
    adapter = TurnAdapter("Teacher")
    turns = [{"speaker": "question", "text": "What is 2 + 3?"},
             {"speaker": "weak_student", "text": "It is 6."}]
    with dspy.context(adapter=adapter):
        critique = dspy.Predict(TeacherCritique)(
            question="What is 2 + 3?", reference="5", dialogue=Transcript.of(turns)
        ).critique
    ```
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import dspy

from modules.lm.call_cache import note_format
from modules.scenarios.guards import SPEAKER_LABELS


class Transcript(str):
    """The dialogue so far: its text as every adapter reads it (one labelled paragraph per
    turn), and the turns themselves for adapters that send them as chat history.

    A ``str`` so Signatures keep ``dialogue: str``, DSPy's adapters render it as the plain
    transcript, and saved demos stay plain strings."""

    turns: tuple[tuple[str, str], ...]

    def __new__(cls, turns: tuple[tuple[str, str], ...] = ()) -> Transcript:
        text = "\n\n".join(f"{label}: {said}" for label, said in turns)
        made = super().__new__(cls, text)
        made.turns = turns
        return made

    @classmethod
    def of(cls, turns: list[dict[str, Any]]) -> Transcript:
        """From the program's turn dicts (speaker names become their labels)."""
        return cls(tuple((speaker_label(t["speaker"]), t["text"]) for t in turns))

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (Dask shards) keep the turns
        return (type(self), (self.turns,))


def speaker_label(speaker: str) -> str:
    """How a speaker is named in a transcript: "Teacher", "Student", "Student A"."""
    return SPEAKER_LABELS.get(speaker, speaker.replace("_", " ").title())


# End-of-turn tokens of common chat templates: what follows is not this speaker's turn.
_END_OF_TURN = re.compile(
    r"<\|(?:im_end|im_start|eot_id|endoftext|end|start_header_id)\|>|</s>|<end_of_turn>"
    r"|\[\[ ## completed ## \]\]"
)
# Machinery that may decorate a turn without ending it.
_STRAY = re.compile(
    r"\[\[ ## \w+ ## \]\]|<\|(?:assistant|user|system|end_header_id)\|>|\[/?INST\]"
    r"|<start_of_turn>(?:model|user)?"
)
_ROLE_WORD = re.compile(r"^\s*(?:assistant|model)\s*\n", re.IGNORECASE)


def clean_turn(text: str, label: str) -> tuple[str, list[str]]:
    """A completion as the turn it carries, and what had to be removed (empty: nothing).

    Cut at the first end-of-turn token; strip field markers and other template tokens; drop a
    leading "<own label>:" (or "Assistant:"). Another speaker's label is left in place: writing
    another's turn is role leakage, which the guards judge, not a format slip to hide."""
    repairs: list[str] = []
    end = _END_OF_TURN.search(text)
    if end is not None:
        repairs.append("end_of_turn")
        text = text[: end.start()]
    stripped = _STRAY.sub("", text)
    if stripped != text:
        repairs.append("markup")
        text = stripped
    role_word = _ROLE_WORD.match(text)
    if role_word is not None:
        repairs.append("markup")
        text = text[role_word.end() :]
    prefix = re.match(
        rf"^\s*[\*#]*\s*(?:{re.escape(label)}|assistant)\s*\**\s*:\s*\**\s*",
        text,
        re.IGNORECASE,
    )
    if prefix is not None:
        repairs.append("speaker_prefix")
        text = text[prefix.end() :]
    return text.strip(), repairs


class TurnAdapter(dspy.Adapter):
    """Formats one agent's call as the paper's chat transport and reads back its turn.

    Args:
        speaker: the label this agent speaks under ("Teacher", "Student", "Student A"): its own
            turns in the history are sent as ``assistant`` and a leading "<speaker>:" is
            stripped from its reply.
    """

    def __init__(self, speaker: str) -> None:
        super().__init__()
        self.speaker = speaker

    def format(
        self,
        signature: type[dspy.Signature],
        demos: list[dict[str, Any]],
        inputs: dict[str, Any],
    ) -> list[dict[str, Any]]:
        shown = _transcripts(signature, inputs)
        said = {text for t in shown for _, text in t.turns}
        system = [textwrap.dedent(signature.instructions).strip()]
        for name, field in signature.input_fields.items():
            value = inputs.get(name)
            if value is None or isinstance(value, Transcript) or str(value) in said:
                continue  # the history carries it (the question is the dialogue's first turn)
            system.append(f"{_title(name, field)}:\n{value}")
        examples = self._examples(signature, demos)
        if examples:
            system.append(examples)
        messages: list[dict[str, Any]] = [{"role": "system", "content": "\n\n".join(system)}]
        for transcript in shown:
            for label, text in transcript.turns:
                own = label == self.speaker
                _append(
                    messages, "assistant" if own else "user", text if own else f"{label}: {text}"
                )
        if messages[-1]["role"] != "user":
            _append(messages, "user", f"{self.speaker}, it is your turn.")
        return messages

    def _examples(self, signature: type[dspy.Signature], demos: list[dict[str, Any]]) -> str:
        """Demos as worked examples: their inputs, then the turn that was said."""
        output = next(iter(signature.output_fields))
        blocks = []
        for demo in demos:
            if not demo.get(output):
                continue
            lines = [
                f"{_title(name, field)}: {demo[name]}"
                for name, field in signature.input_fields.items()
                if demo.get(name) not in (None, "")
            ]
            lines.append(f"{self.speaker}: {demo[output]}")
            blocks.append("\n".join(lines))
        if not blocks:
            return ""
        numbered = [f"Example {i}:\n{block}" for i, block in enumerate(blocks, start=1)]
        return "Examples of good turns:\n\n" + "\n\n".join(numbered)

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        output = next(iter(signature.output_fields))
        text, repairs = clean_turn(completion, self.speaker)
        if repairs:
            note_format("repaired")
        return {output: text}

    def format_assistant_message_content(
        self,
        signature: type[dspy.Signature],
        outputs: dict[str, Any],
        missing_field_message: str | None = None,
    ) -> str:
        output = next(iter(signature.output_fields))
        return str(outputs.get(output, missing_field_message or ""))


def _transcripts(signature: type[dspy.Signature], inputs: dict[str, Any]) -> list[Transcript]:
    return [v for name in signature.input_fields if isinstance(v := inputs.get(name), Transcript)]


def _title(name: str, field: Any) -> str:
    desc = (field.json_schema_extra or {}).get("desc", "")
    title = name.replace("_", " ").capitalize()
    return f"{title} ({desc})" if desc and not desc.startswith("${") else title


def _append(messages: list[dict[str, Any]], role: str, content: str) -> None:
    """Consecutive messages of one role are merged: strict chat templates want alternation."""
    last = messages[-1]
    if last["role"] == role and role != "system":
        last["content"] = f"{last['content']}\n\n{content}"
    else:
        messages.append({"role": role, "content": content})
