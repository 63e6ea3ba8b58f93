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

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
import orjson
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from modules.lm.canonical import canonical_json, orjson_exact
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


def seal(key: str, body: Any) -> str:
    """A checksum binding an entry's content to its key: a damaged value, a hand-edited one
    or one moved under another key no longer matches, and is recomputed instead of trusted."""
    return hashlib.sha256(f"{key}\x1f{canonical_json(body)}".encode()).hexdigest()[:32]


def read_value(cache: diskcache.Cache, key: Any) -> Any:
    """A cache value, or None if it is missing or unreadable (then it is dropped, so the next
    write replaces it). Values are JSON (SafeJSONDisk): reading one never runs code."""
    try:
        return cache.get(key)
    except (zlib.error, ValueError, UnicodeDecodeError, OSError):
        cache.delete(key)
        return None


def read_checked(cache: diskcache.Cache, key: str, field: str) -> dict[str, Any] | None:
    """A cache value, or None if it is missing, unreadable or fails its checksum."""
    value = read_value(cache, key)
    if not isinstance(value, dict) or value.get("check") != seal(key, value.get(field)):
        return None
    return value


class _RefusesPickles:
    """Never unpickles anything. diskcache keeps a mode and a raw flag beside each row, and
    its base Disk unpickles rows marked as pickles: a row edited in the SQLite file (a shared
    cache folder is writable by others) would run code on read. We never store pickles, so a
    row claiming to be one is refused as damaged."""

    REFUSED_KEY = "!refused: a key stored as a pickle"

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            return self.REFUSED_KEY  # listed as unknown, never unpickled
        return super().get(key, raw)  # type: ignore[misc]

    @staticmethod
    def _refuse_pickle(mode: int) -> None:
        if mode == diskcache.core.MODE_PICKLE:
            raise ValueError("a cache value stored as a pickle: refused")

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        self._refuse_pickle(mode)
        return super().fetch(mode, filename, value, read)  # type: ignore[misc]


class SafeJSONDisk(_RefusesPickles, diskcache.JSONDisk):
    """JSONDisk (keys and values as compressed JSON) that never unpickles.

    Values are written and read by orjson (the writer thread holds the GIL while it
    serialises, and the loop waits on it); a value orjson would write differently (NaN, a
    tuple) is written by json as before, and what orjson cannot read (NaN) is read by json.
    Keys stay json.dumps' text: they are what a row is looked up by."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if read or not orjson_exact(value):
            return super().store(value, read, key=key)
        data = zlib.compress(orjson.dumps(value), self.compress_level)
        return diskcache.Disk.store(self, data, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        self._refuse_pickle(mode)
        data = diskcache.Disk.fetch(self, mode, filename, value, read)
        if read:
            return data
        text = zlib.decompress(data)
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)


class SafeBytesDisk(_RefusesPickles, diskcache.Disk):
    """Text keys and bytes values stored as they are: no JSON, no compression (what an
    embedding vector needs: it does not compress, and encoding it cost more than the write).
    Anything else is refused rather than pickled."""

    def put(self, key: Any) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"a {type(key).__name__} key: only text keys are stored")
        return super().put(key)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, bytes) or read:
            raise TypeError(f"a {type(value).__name__} value: only bytes are stored")
        return super().store(value, read, key=key)


class GroupCommit:
    """Writes made on an event loop, committed together by a writer thread.

    A transaction per LM call, on the one thread that also drives every dialogue, costs that
    thread CPU on every call; committing batches on it stalls the loop, which every dialogue
    waiting on a response pays. Here a write made on a running loop is handed to a
    writer thread, which commits what has gathered every `delay` seconds in one transaction
    (SQLite and zlib let go of the GIL while they work); reads see pending writes at once.
    A write made outside a loop (threads, the CLI) is committed before it returns, as before.

    `close()` commits what is pending, so Ctrl-C and a cancelled flow keep every finished
    call; a kill -9 loses the writes not yet committed, which the next run recomputes: those
    of the last `delay` period and of the commit then under way, longer while other threads
    keep the writer from the GIL (benchmarks/decisions.md). A store is never half-written:
    each batch is one transaction. `first` are stores committed before this one: a stored
    dialogue's calls are always on disk before the dialogue is.

    The writer thread only gets the GIL when the loop lets go of it, so a loop that produces
    writes faster than they commit (a fast endpoint, the CPU saturated) would pile them up,
    memory growing with the run and a kill losing all of them. At `limit` pending writes the
    loop commits them itself before going on, which bounds both the memory and what a kill can
    lose."""

    def __init__(
        self,
        cache: diskcache.Cache,
        first: tuple[GroupCommit, ...] = (),
        delay: float = 0.1,
        limit: int = 1000,
    ) -> None:
        self.cache, self.first, self.delay, self.limit = cache, first, delay, limit
        self.pending: dict[str, Any] = {}
        self.writing: dict[str, Any] = {}
        self._lock = threading.Lock()  # guards pending and writing
        self._commit = threading.Lock()  # one batch at a time, in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, key: str) -> Any:
        """A value not yet committed (None if there is none: then read the cache itself)."""
        with self._lock:
            value = self.pending.get(key)
            return value if value is not None else self.writing.get(key)

    def read_checked(self, key: str, field: str) -> dict[str, Any] | None:
        """read_checked on the store, a pending value first (this run sealed it)."""
        pending = self.get(key)
        return pending if pending is not None else read_checked(self.cache, key, field)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self.pending[key] = value
            on_loop = _on_loop()
            if on_loop and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="master-cache-writer", daemon=True
                )
                self._thread.start()
            behind = len(self.pending) >= self.limit
        if not on_loop or behind:
            self.flush()

    def flush(self) -> None:
        """Commit everything pending (the stores in `first` before this one)."""
        for store in self.first:
            store.flush()
        with self._commit:
            with self._lock:
                if not self.pending:
                    return
                batch, self.pending = self.pending, {}
                self.writing = batch
            try:
                with self.cache.transact():
                    for key, value in batch.items():
                        self.cache.set(key, value)
            except BaseException:
                with self._lock:  # kept for the next attempt; newer values win
                    self.pending = {**batch, **self.pending}
                raise
            finally:
                with self._lock:
                    self.writing = {}

    def _run(self) -> None:
        while not self._stop.wait(self.delay):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - kept pending; close() raises it
                logging.getLogger("master").warning("cache write failed, retrying: %s", exc)
        self.cache.close()  # this thread's own SQLite connection

    def close(self) -> None:
        """Stop the writer thread and commit what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._stop.clear()
        self.flush()


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
