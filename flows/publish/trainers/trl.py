"""TRL: conversational prompt/completion rows (`SFTTrainer` computes the loss on the
completion only, `completion_only_loss`).

`assistant_only_loss` would mask by role, never by turn, so a weight-0 assistant turn can only
stay out of TRL's loss as part of a prompt: one row per trained assistant message, the
dialogue before it as the prompt. tests/system/test_trainers.py checks TRL's own dataset
preparation on this file.
"""

from __future__ import annotations

from collections.abc import Sequence

FILE = "prompt_completion.jsonl"


def rows(
    messages: list[dict[str, str]], trained: Sequence[int]
) -> list[dict[str, list[dict[str, str]]]]:
    """One row per trained message (an index into `messages`): the messages before it as the
    prompt, it as the completion (role and content only)."""
    return [
        {
            "prompt": [{"role": m["role"], "content": m["content"]} for m in messages[:i]],
            "completion": [{"role": "assistant", "content": messages[i]["content"]}],
        }
        for i in trained
    ]
