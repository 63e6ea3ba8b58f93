"""The content-addressed LM-call cache and the per-call ledger.

Every call goes through ``CachingEngine``, which wraps the real engine (remote or embedded).
The key is the SHA-256 of the canonical JSON of the request DSPy built (model, sampling
parameters, the rendered messages with the dialogue so far), the rollout slot and a format
version: change a role's instructions and only that role's calls, and the turns after them,
get new keys. Values are JSON (never pickles), in diskcache's ``JSONDisk``.

The rollout slot and the ledger travel in context variables, set by the agents around each
call: DSPy's engine contract gives an engine the request only.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from modules.cache.canonical import canonical_json
from modules.cache.disks import SafeJSONDisk, read_value, seal
from modules.cache.group_commit import GroupCommit
from modules.lm.grammar import header, output_fields
from modules.lm.settings import EMBEDDED_DECODING

#: 2: keys built from request_fields (fields we own) and responses stored as response_fields.
CACHE_FORMAT = 2

#: The sampling settings a request's key covers (lm15 Config fields, read by name).
SAMPLING = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "response_format",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
    "extensions",
)


def prompt_text(value: Any) -> str:
    """A system prompt or message content as text (str, or a sequence of text parts)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return "".join(str(getattr(part, "text", "") or "") for part in value)


def request_fields(request: Request) -> dict[str, Any]:
    """What identifies a request, in a shape this project owns: the model, the system prompt,
    each message's role and text, the tools' names and the sampling settings. A DSPy upgrade
    that changes its own request serialisation cannot change a key (tests pin one)."""
    config, messages = request.config, request.messages
    sampling = {}
    for name in SAMPLING:
        value = getattr(config, name, None)
        if value not in (None, (), {}):
            sampling[name] = list(value) if isinstance(value, tuple) else value
    if request.model.startswith("embedded/"):  # the embedded engine's own decoding settings
        sampling["decoding"] = dict(EMBEDDED_DECODING)
    return {
        "model": request.model,
        "system": prompt_text(request.system),
        "messages": [[m.role, prompt_text(getattr(m, "parts", None) or m.text)] for m in messages],
        "tools": [getattr(t, "name", str(t)) for t in request.tools],
        "sampling": sampling,
    }


def response_fields(response: Response) -> dict[str, Any]:
    """A response as stored: its text, finish reason, token counts, id and model."""
    usage = response.usage
    return {
        "text": response.text or "",
        "finish_reason": response.finish_reason,
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "id": response.id,
        "model": response.model,
    }


def stored_response(fields: dict[str, Any]) -> Response:
    """The Response a stored entry stands for (KeyError/TypeError/ValueError if damaged)."""
    return Response(
        id=fields["id"],
        model=fields["model"],
        message=Message.assistant([TextPart(str(fields["text"]))]),
        finish_reason=fields["finish_reason"],
        usage=Usage(input_tokens=fields["input_tokens"], output_tokens=fields["output_tokens"]),
    )


@dataclass
class CallRecord:
    """One LM call as the run accounts for it."""

    role: str
    model: str
    key: str
    cached: bool
    tokens_in: int
    tokens_out: int
    finish_reason: str
    reason: str | None = None  # dry runs: why this call is not cached
    format: str | None = None  # "repaired" or "failed": the reply needed cleaning or never parsed


@dataclass
class CallLedger:
    records: list[CallRecord] = field(default_factory=list)

    @property
    def last(self) -> CallRecord | None:
        return self.records[-1] if self.records else None


_rollout: contextvars.ContextVar[int] = contextvars.ContextVar("master_rollout", default=0)
_dialogue: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "master_dialogue", default=None
)
_ledger: contextvars.ContextVar[CallLedger | None] = contextvars.ContextVar(
    "master_ledger", default=None
)


_prompt: contextvars.ContextVar[str | None] = contextvars.ContextVar("master_prompt", default=None)


@contextlib.contextmanager
def rollout(slot: int, prompt: str | None = None) -> Iterator[None]:
    """Calls made inside get their own cache slot: identical prompts, distinct samples.
    `prompt` (prompt_sha of the calling predictor) is stored with each entry, so
    `master cache prune --unused` can tell which entries a current program still asks for."""
    token = _rollout.set(slot)
    prompt_token = _prompt.set(prompt)
    try:
        yield
    finally:
        _prompt.reset(prompt_token)
        _rollout.reset(token)


def prompt_sha(predictor: Any) -> str:
    """What a predictor says to its model whatever the inputs: instructions, fields, demos."""
    signature = predictor.signature
    state = {
        "instructions": signature.instructions,
        "fields": list(signature.fields),
        "demos": [dict(d) for d in predictor.demos],
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def dialogue_slot(name: str) -> Iterator[None]:
    """Calls made inside belong to this dialogue: each is indexed by its position in it, so a
    dry run can tell *why* a call is not cached (new seed, model, sampling or instructions)."""
    token = _dialogue.set(name)
    try:
        yield
    finally:
        _dialogue.reset(token)


def current_slot() -> str | None:
    """`<dialogue>:<n>` for the n-th call of the current dialogue, or None outside one."""
    name, book = _dialogue.get(), _ledger.get()
    if name is None or book is None:
        return None
    return f"{name}:{len(book.records)}"


def slot_facts(request: Request, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies a call apart from its dialogue history: model, sampling, instructions.
    `data` is request_fields(request) when the caller already has it."""
    data = request_fields(request) if data is None else data
    system = canonical_json(data["system"])
    return {
        "model": request.model,
        "sampling": data["sampling"],
        "system_sha": hashlib.sha256(system.encode()).hexdigest()[:16],
    }


@contextlib.contextmanager
def ledger() -> Iterator[CallLedger]:
    """Collect the records of every call made inside (one dialogue, usually)."""
    book = CallLedger()
    token = _ledger.set(book)
    try:
        yield book
    finally:
        _ledger.reset(token)


def current_ledger() -> CallLedger | None:
    return _ledger.get()


def note_format(outcome: str) -> None:
    """Mark the current dialogue's last call: its reply was "repaired" (cleaned before it
    became a turn or a verdict) or "failed" (it could not be parsed). Counted per role in
    summary.json; outside a ledger (show-prompts, a bare Predict) it does nothing."""
    book = _ledger.get()
    if book is not None and book.last is not None and book.last.format != "failed":
        book.last.format = outcome


def call_key(request: Request, slot: int) -> str:
    return _key(request_fields(request), slot)


def _key(data: dict[str, Any], slot: int) -> str:
    """call_key from request_fields(request), which the engines reuse for the slot facts."""
    payload = {"v": CACHE_FORMAT, "request": data, "rollout": slot}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class CallStore:
    """diskcache with JSON values: safe to share between processes (SQLite underneath)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        # cull_limit=0: no eviction check on every write. It halves the CPU of a write (the
        # check costs two more queries), and LM results are never dropped silently when the
        # store passes diskcache's default 1 GB size limit; `master cache` manages the size.
        self.cache = diskcache.Cache(str(self.directory), disk=SafeJSONDisk, cull_limit=0)
        self.writes = GroupCommit(self.cache)

    def get(self, key: str) -> dict[str, Any] | None:
        value = self.writes.read_checked(key, "response")
        if value is not None and isinstance(value.get("response"), dict):
            return value
        return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.writes.set(key, {**value, "check": seal(key, value.get("response"))})

    def put_slot(self, slot: str, facts: dict[str, Any]) -> None:
        self.writes.set(f"slot:{slot}", facts)

    def put_call(
        self, key: str, value: dict[str, Any], slot: str | None, facts: dict[str, Any]
    ) -> None:
        """A finished call and its slot entry (the slot after the call it points to)."""
        self.put(key, value)
        if slot is not None:
            self.writes.set(f"slot:{slot}", {**facts, "call": key})

    def get_slot(self, slot: str) -> dict[str, Any] | None:
        pending = self.writes.get(f"slot:{slot}")
        value = pending if pending is not None else read_value(self.cache, f"slot:{slot}")
        return value if isinstance(value, dict) else None

    def flush(self) -> None:
        self.writes.flush()

    def close(self) -> None:
        self.writes.close()
        self.cache.close()


def _record(role: str, request: Request, key: str, response: Response, cached: bool) -> None:
    book = _ledger.get()
    if book is None:
        return
    usage = response.usage
    book.records.append(
        CallRecord(
            role=role,
            model=request.model,
            key=key,
            cached=cached,
            tokens_in=usage.input_tokens or 0,
            tokens_out=usage.output_tokens or 0,
            finish_reason=response.finish_reason,
        )
    )


class CachingEngine:
    """Wraps a DSPy engine with the content-addressed cache and the ledger."""

    def __init__(self, inner: Any, role: str, store: CallStore | None) -> None:
        self.inner = inner
        self.role = role
        self.store = store

    def _lookup(self, key: str) -> Response | None:
        if self.store is None:
            return None
        hit = self.store.get(key)
        if hit is None:
            return None
        try:
            return stored_response(hit["response"])
        except (KeyError, TypeError, ValueError):
            return None  # a damaged entry is recomputed, never trusted

    def _save(
        self, key: str, request: Request, response: Response, data: dict[str, Any] | None = None
    ) -> None:
        if self.store is not None:
            facts = slot_facts(request, data)
            value = {
                "response": response_fields(response),
                "role": self.role,
                "model": request.model,
                "system_sha": facts["system_sha"],
                "prompt_sha": _prompt.get(),
                "ts": time.time(),
            }
            self.store.put_call(key, value, current_slot(), facts)

    def complete(self, request: Request) -> Response:
        data = request_fields(request)
        key = _key(data, _rollout.get())
        response = self._lookup(key)
        if response is not None:
            _record(self.role, request, key, response, cached=True)
            return response
        response = self.inner.complete(request)
        self._save(key, request, response, data)
        _record(self.role, request, key, response, cached=False)
        return response

    def stream(self, request: Request) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        self.inner.close()


class AsyncCachingEngine:
    """The same cache in front of an async engine."""

    def __init__(self, inner: Any, sync: CachingEngine) -> None:
        self.inner = inner
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        data = request_fields(request)
        key = _key(data, _rollout.get())
        response = self.sync._lookup(key)
        if response is not None:
            _record(self.sync.role, request, key, response, cached=True)
            return response
        response = await self.inner.complete(request)
        self.sync._save(key, request, response, data)
        _record(self.sync.role, request, key, response, cached=False)
        return response

    async def stream(self, request: Request) -> Any:
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        await self.inner.aclose()


def miss_reason(store: CallStore, request: Request, slot: str | None) -> str:
    """Why a call's key is not in the cache, judged against what this slot ran last time."""
    previous = store.get_slot(slot) if slot else None
    if previous is None:
        return "new seed"
    facts = slot_facts(request)
    if previous.get("model") != facts["model"]:
        return "model changed"
    if previous.get("sampling") != facts["sampling"]:
        return "sampling changed"
    if previous.get("system_sha") != facts["system_sha"]:
        return "instructions changed"
    return "earlier turn changed"


def _placeholder(request: Request) -> str:
    """A parseable answer standing in for one not yet generated."""
    system = request.system if isinstance(request.system, str) else ""
    parts = [
        f"{header(f.name)}\n{'(pending)' if f.type == 'str' else f.default_value()}"
        for f in output_fields(system)
    ]
    return "\n\n".join([*parts, header("completed")]) if parts else "(pending)"


class DryRunEngine:
    """`master plan`: answers from the cache where it can, and otherwise records the call it
    would make (with the reason and estimated tokens) and answers with a placeholder. Because
    the placeholder enters later prompts, every later turn of that dialogue is a miss too,
    exactly as in a real run."""

    def __init__(self, role: str, store: CallStore) -> None:
        self.role = role
        self.store = store

    def complete(self, request: Request) -> Response:
        key = call_key(request, _rollout.get())
        hit = self.store.get(key)
        if hit is not None:
            response = stored_response(hit["response"])
            _record(self.role, request, key, response, cached=True)
            return response
        reason = miss_reason(self.store, request, current_slot())
        chars = len(canonical_json(request_fields(request)["messages"])) + len(
            str(request.system or "")
        )
        response = Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(_placeholder(request))]),
            finish_reason="stop",
            usage=Usage(
                input_tokens=chars // 4, output_tokens=(request.config.max_tokens or 0) // 2
            ),
        )
        _record(self.role, request, key, response, cached=False)
        book = _ledger.get()
        if book is not None:
            book.records[-1].reason = reason
        return response

    def stream(self, request: Request) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release."""
