"""LLaMA-Factory: its dataset file, its dataset_info.json entry, the paper's LoRA recipe, and
how its data pipeline encodes and cuts a row (the length audit).

LLaMA-Factory has no per-message loss weight: a ShareGPT row trains every `gpt` message, or
with `mask_history: true` only the last one (src/llamafactory/data/processor/supervised.py).
So with publish.flawed_turns `mask` the file holds one row per trained turn, the dialogue up
to and including that weight-1 assistant message, and the recipe sets `mask_history`; with
`train` it holds one row per dialogue, every assistant message trained, as the paper's
ShareGPT data is. The encoding below is LLaMA-Factory 0.9.5's for the recipe's template
(`default`) and `infer_seqlen`; tests/system/test_trainers.py pins it against LLaMA-Factory's
own pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from flows.publish.paper_setup import PAPER_TRAINING

FILE = "llamafactory.jsonl"
INFO_FILE = "dataset_info.json"
RECIPE_FILE = "llamafactory_lora.yaml"

#: The recipe's model and template. The paper fine-tunes base models (LLaMA3-8B, Qwen2.5-7B,
#: Mistral-7B) and gives no template; LLaMA-Factory's README says a base model takes
#: `default` (an instruct model its own template), so the recipe pairs the base Llama 3 with it.
MODEL = "meta-llama/Meta-Llama-3-8B"
TEMPLATE = "default"
CUTOFF_LEN = 2048

#: The `default` template's slots: (text before the content, text after the eos token).
_USER = ("Human: ", "\nAssistant:")
_ASSISTANT = ("", "\n")


def dataset_info(name: str) -> dict[str, Any]:
    """The dataset_info.json entry for FILE (ShareGPT layout)."""
    return {
        name: {
            "file_name": FILE,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
                "system_tag": "system",
            },
        }
    }


def rows(
    conversation: list[dict[str, str]], trained: Sequence[int], masking: bool
) -> list[list[dict[str, str]]]:
    """The conversations of FILE for one dialogue: with `masking`, one per trained message
    (index into `conversation`), cut after it; else the whole dialogue once."""
    if not masking:
        return [conversation]
    return [conversation[: i + 1] for i in trained]


def recipe(name: str, masking: bool) -> str:
    """llamafactory_lora.yaml: LLaMA-Factory SFT with appendix D.2's hyperparameters on this
    dataset (its dataset_info.json entry `name`, in the folder the command runs from)."""
    settings: dict[str, Any] = {
        "model_name_or_path": MODEL,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_target": "all",
        "dataset": name,
        "dataset_dir": ".",
        "template": TEMPLATE,
        "cutoff_len": CUTOFF_LEN,
        **({"mask_history": True} if masking else {}),
        "overwrite_cache": True,
        "preprocessing_num_workers": 8,
        "output_dir": f"saves/{name}-lora",
        "logging_steps": 10,
        "save_steps": 500,
        "plot_loss": True,
        "overwrite_output_dir": True,
        **PAPER_TRAINING,
        "bf16": True,
    }
    masked = (
        "# Each row of llamafactory.jsonl is a dialogue up to one trained (weight 1) assistant\n"
        "# turn; mask_history trains that last turn only, so the deliberately imperfect turns\n"
        "# (publish.flawed_turns: mask) are context, never a target.\n"
        if masking
        else "# Each row of llamafactory.jsonl is a whole dialogue: every assistant turn is\n"
        "# trained.\n"
    )
    head = (
        "# LLaMA-Factory SFT recipe: the paper's fine-tuning (appendix D.2: LoRA, 2 epochs,\n"
        "# lr 1e-4, batch 2 x gradient accumulation 8, cosine, warmup 0.1) on this dataset.\n"
        "# Run it from this folder (dataset_info.json names the data):\n"
        "#   llamafactory-cli train llamafactory_lora.yaml\n"
        + masked
        + "# The paper fine-tunes base models and gives no template; LLaMA-Factory pairs a base\n"
        "# model with the `default` template. Its other base models: Qwen/Qwen2.5-7B and\n"
        "# mistralai/Mistral-7B-v0.1 (template: default too). The LoRA rank and targets and the\n"
        "# cutoff length are LLaMA-Factory's example values: the paper does not give them.\n"
    )
    return head + yaml.safe_dump(settings, sort_keys=False)


def message_lengths(conversation: list[dict[str, str]], count: Callable[[str], int]) -> list[int]:
    """Tokens of each message as the `default` template encodes it: every text slot
    tokenized on its own (no special tokens added), one eos token after each message
    (LLaMA-Factory adds one to a tokenizer that has none)."""
    lengths = []
    for message in conversation:
        before, after = _USER if message["from"] == "human" else _ASSISTANT
        text = before + message["value"]
        lengths.append((count(text) if text else 0) + 1 + (count(after) if after else 0))
    return lengths


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's (data/processor/processor_utils.py): a pair's lengths once cut to fit."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


@dataclass(frozen=True)
class Fit:
    """A row of FILE against cutoff_len, as LLaMA-Factory's supervised processor fills it."""

    length: int  # tokens before any cut
    kept: int  # tokens after the cut (the row's input_ids)
    labelled: int  # tokens with a loss label, after the cut
    labelled_full: int  # tokens with a loss label had nothing been cut
    cut_first: int | None  # the message cut first as LLaMA-Factory fills the row (see fit)


def fit(lengths: Sequence[int], cutoff_len: int, mask_history: bool) -> Fit:
    """How a row whose messages have `lengths` fits: pairs (user, assistant) are filled in
    order, or last first with mask_history (which labels the last assistant message only);
    a pair that does not fit is cut by infer_seqlen, and the pairs after it are dropped.
    `cut_first` names that pair's assistant message when it loses tokens, else its user
    message: what the loss loses is what matters."""
    pairs = [(lengths[i], lengths[i + 1]) for i in range(0, len(lengths) - 1, 2)]
    order = list(range(len(pairs)))[::-1] if mask_history else list(range(len(pairs)))
    kept = [(0, 0)] * len(pairs)
    total = 0
    for i in order:
        if total >= cutoff_len:
            break
        kept[i] = infer_seqlen(*pairs[i], cutoff_len - total)
        total += sum(kept[i])
    trained = [order[0]] if mask_history and pairs else list(range(len(pairs)))
    cut_first = None
    for i in order:  # the first pair that loses tokens; its answer when that loses any
        if kept[i] != pairs[i]:
            cut_first = 2 * i + 1 if kept[i][1] < pairs[i][1] else 2 * i
            break
    return Fit(
        length=sum(lengths[: 2 * len(pairs)]),
        kept=total,
        labelled=sum(kept[i][1] for i in trained),
        labelled_full=sum(pairs[i][1] for i in trained),
        cut_first=cut_first,
    )
