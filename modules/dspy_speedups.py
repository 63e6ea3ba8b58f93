"""Three measured hot spots in DSPy 3.4, removed without changing any output.

``dspy.adapters.utils.serialize_for_json`` builds a new pydantic ``TypeAdapter`` for every
field value it formats: six or seven per LM call for our signatures (inputs and the
instruction placeholders), about 0.15 ms each, so about 1 ms of CPU per call spent
rebuilding the same few schemas. Here the adapter is built once per value type (and a plain
``str``, by far the common case, is returned as is: that is what pydantic returns for it).
The result is the same value, so the rendered prompts, and the cache keys computed from them,
do not change (tests/test_dspy_speedups.py checks it against DSPy's own function).

``Adapter.format_system_message`` rebuilds a signature's system message (field list, field
structure, instructions) on every call: about 0.35 ms of the 0.6 ms a ChatAdapter spends
formatting a turn, for text that depends on nothing but the signature. DSPy's own adapters
(ChatAdapter, JSONAdapter) now keep it per adapter class, signature and instructions (an
optimizer's rewritten instructions are a new entry); any other adapter is left alone, since
it may read its own state. Checked against DSPy's method for every signature we ship.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any

from pydantic import TypeAdapter

_installed = False
_original_system_message: Any = None


@lru_cache(maxsize=512)
def _adapter(value_type: type) -> TypeAdapter[Any]:
    return TypeAdapter(value_type)


def serialize_for_json(value: Any) -> Any:
    """DSPy's serialize_for_json, with the TypeAdapter cached per type."""
    if type(value) is str:
        return value
    try:
        return _adapter(type(value)).dump_python(value, mode="json", fallback=str)
    except Exception:  # noqa: BLE001 - DSPy's own fallback, unchanged
        return str(value)


@lru_cache(maxsize=1024)
def _system_message(adapter_type: type, signature: type, instructions: str | None) -> str:
    del instructions  # part of the key only: the signature's text as it is now
    return _original_system_message(adapter_type(), signature)  # type: ignore[no-any-return]


def format_system_message(self: Any, signature: type) -> str:
    """Adapter.format_system_message, kept per (adapter class, signature, instructions) for
    DSPy's ChatAdapter and JSONAdapter (whose system message reads only the signature)."""
    if type(self) not in _CACHED_ADAPTERS:
        return _original_system_message(self, signature)  # type: ignore[no-any-return]
    return _system_message(type(self), signature, signature.__doc__)


_CACHED_ADAPTERS: set[type] = set()


def install() -> None:
    """Point DSPy's adapter modules at the cached versions (idempotent)."""
    global _installed, _original_system_message
    if _installed:
        return
    import dspy.adapters.base
    import dspy.adapters.json_adapter
    import dspy.adapters.utils
    from dspy.adapters.chat_adapter import ChatAdapter
    from dspy.adapters.json_adapter import JSONAdapter

    for module in (dspy.adapters.utils, dspy.adapters.base, dspy.adapters.json_adapter):
        if hasattr(module, "serialize_for_json"):
            module.serialize_for_json = serialize_for_json  # type: ignore[attr-defined]
    _original_system_message = dspy.adapters.base.Adapter.format_system_message
    _CACHED_ADAPTERS.update((ChatAdapter, JSONAdapter))
    dspy.adapters.base.Adapter.format_system_message = format_system_message  # type: ignore[method-assign]
    _installed = True


#: DSPy's async path sends these to a worker thread on every call (asyncio.to_thread): request
#: preparation, capability planning and advisory pricing. They are CPU work (they would read
#: local media files, which our prompts never carry), so the hop buys no concurrency under the
#: GIL; with many dialogues in flight the thread hand-offs cost more CPU than the work itself.
_INLINE = {
    ("dspy.clients.execution", "prepare"),
    ("dspy.clients.execution", "_price_result"),
    ("dspy.clients.execution", "_cached"),
    ("dspy.clients.execution", "_store"),
    ("dspy.clients.capabilities", "capabilities"),
}


class InlineDSPyHelpers(ThreadPoolExecutor):
    """A loop's default executor that runs DSPy's per-call helpers inline, on the loop's own
    thread, and everything else (DNS lookups, the embedded model) in worker threads as usual.

    An inline helper's result comes back as an asyncio future that is already done:
    ``run_in_executor`` hands such a future over as it is, and awaiting it does not yield, so
    the call goes on without a trip through the loop (a thread-safe wake-up and two chained
    futures per helper otherwise)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        target = fn.args[0] if isinstance(fn, partial) and fn.args else fn
        name = (getattr(target, "__module__", None), getattr(target, "__name__", None))
        if name not in _INLINE:
            return super().submit(fn, *args, **kwargs)
        future: asyncio.Future[Any] | Future[Any]
        try:
            future = asyncio.get_running_loop().create_future()
        except RuntimeError:  # not on a loop's thread: a plain concurrent future
            future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting coroutine
            future.set_exception(exc)
        return future
