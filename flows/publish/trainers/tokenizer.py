"""The tokenizer the length audit counts with: the recipe model's own when it is in the local
Hugging Face cache, else the bundled SmolLM2's (its GGUF through llama.cpp), whose counts are
an estimate of the recipe model's. Nothing is downloaded."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("master")

BUNDLED = "SmolLM2-135M-Instruct (the bundled GGUF)"


@dataclass(frozen=True)
class TokenCounter:
    """Counts a text's tokens (no special tokens added, special-token text parsed as such)."""

    name: str
    estimate: bool  # True when this is not the recipe model's tokenizer
    count: Callable[[str], int]


def _cached(model: str, cache_dir: str | None) -> TokenCounter | None:
    """The model's tokenizer from the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "tokenizer_config.json", cache_dir), str):
        return None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:  # cached in part, or a format this version cannot read
        log.warning("length audit: %s's cached tokenizer did not load (%s)", model, exc)
        return None
    return TokenCounter(
        model, False, lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    )


@functools.cache  # one vocabulary per process: a process may publish many runs
def _bundled() -> TokenCounter:
    """SmolLM2's vocabulary alone, through llama.cpp's model wrapper (the `Llama` class would
    also make a context, which logs to stderr about a vocabulary-only model); texts are
    tokenized into one buffer kept at least as long as the longest text's bytes (a token is
    at least one byte), so each count is one call."""
    from llama_cpp import llama_cpp
    from llama_cpp._internals import LlamaModel

    from modules.lm.embedded import gguf_path

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = LlamaModel(path_model=str(gguf_path()), params=params, verbose=False)
    buffer = [(llama_cpp.llama_token * 4096)()]

    def count(text: str) -> int:
        data = text.encode()
        if len(data) >= len(buffer[0]):
            buffer[0] = (llama_cpp.llama_token * (2 * len(data) + 1))()
        n = llama_cpp.llama_tokenize(model.vocab, data, len(data), buffer[0], len(buffer[0]),
                                     False, True)  # fmt: skip
        if n < 0:
            raise RuntimeError(f"llama.cpp could not tokenize a {len(data)}-byte text")
        return n

    return TokenCounter(BUNDLED, True, count)


def counter(model: str, cache_dir: str | None = None) -> TokenCounter:
    """The recipe model's tokenizer where it is in the Hugging Face cache (`cache_dir`, by
    default the user's), else the bundled one."""
    return _cached(model, cache_dir) or _bundled()
