"""Every use of DSPy's internals, in one place, behind a version guard.

The project builds on DSPy's public API (Signatures, Modules, Predict, Adapters, ``dspy.LM``
with its engine contract ``complete(Request) -> Response``). A few things need more; each is
here, so a DSPy upgrade has one file to check:

- the OpenAI chat body and error mapping of lm15, which DSPy vendors (``_vendor.lm15``), for
  our HTTP engine (modules/lm/openai_compat.py): ``ChatDialect``, ``http_error``;
- two speed patches that change no output: ``serialize_for_json`` builds a pydantic
  ``TypeAdapter`` per value, here cached per type; ``Adapter.format_system_message`` is
  rebuilt per call for ChatAdapter and JSONAdapter, here kept per (adapter class, signature,
  instructions);
- ``InlineDSPyHelpers``: the event loop's executor that runs DSPy's per-call helpers inline
  instead of hopping to a thread;
- ``SchemaAdapter``: DSPy's JSONAdapter with its response-format hook
  (``_prepare_response_format``) always sending the output fields' JSON schema.

``TESTED_DSPY`` names the DSPy release line these were checked against. On another one the
patches are not installed and the HTTP engine is not used (LiteLLM serves every model):
a warning once, then DSPy's plain path, never a crash.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache, partial
from typing import Any

import dspy
from pydantic import ConfigDict, TypeAdapter, create_model

log = logging.getLogger(__name__)

#: The DSPy release line the internals below were checked against (tests pin it).
TESTED_DSPY = "3.4."

_installed = False
_original_system_message: Any = None
_warned = False

try:
    from dspy._vendor.lm15.errors import map_http_error
    from dspy.clients._http import retry_after_seconds
    from dspy.clients.engines.base import validate_request
    from dspy.clients.lm15_boundary import _NoTransport
    from dspy.lm15 import OpenAIChatLM

    _HTTP_INTERNALS = True
except ImportError:  # an untested DSPy: the HTTP engine is not offered (see http_engine_usable)
    _HTTP_INTERNALS = False


def tested_version() -> bool:
    """Whether the installed DSPy is the release line these internals were checked against."""
    return str(getattr(dspy, "__version__", "")).startswith(TESTED_DSPY)


def _warn_untested(what: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning(
            "DSPy %s is not the tested %sx: %s (DSPy's plain path is used)",
            getattr(dspy, "__version__", "?"),
            TESTED_DSPY,
            what,
        )


def http_engine_usable() -> bool:
    """Whether our OpenAI-compatible HTTP engine can run on this DSPy (else LiteLLM serves)."""
    if _HTTP_INTERNALS and tested_version():
        return True
    _warn_untested("the OpenAI-compatible engine is off, LiteLLM serves every model")
    return False


class ChatDialect:
    """lm15's OpenAI chat conversion: a Request as the chat-completions body, and HTTP errors
    as DSPy's canonical errors. DSPy builds this dialect anew per call; it holds no per-call
    state, so one serves every call and thread."""

    def __init__(self) -> None:
        self._dialect = OpenAIChatLM(api_key="conversion-only", transport=_NoTransport())

    def chat_body(self, request: Any) -> dict[str, Any]:
        """The body DSPy's request_kwargs(request, "chat") gives, without `stream`."""
        validate_request(request)
        data = self._dialect._payload(request, stream=False)
        data.pop("stream", None)
        return data


def http_error(
    status: int, message: str, provider: str, provider_code: str | None, retry_after: Any
) -> Exception:
    """The canonical lm15 error of an HTTP status (RateLimitError, ServerError, ...);
    `retry_after` is the Retry-After header as the server sent it."""
    return map_http_error(
        status,
        message,
        provider=provider,
        provider_code=provider_code,
        retry_after=retry_after_seconds(retry_after),
    )


class SchemaAdapter(dspy.JSONAdapter):
    """DSPy's JSONAdapter that always sends the output fields' JSON schema as
    ``response_format`` (OpenAI's json_schema form; the engines translate it for servers that
    take another spelling, see LMSettings.structured_output), whatever LiteLLM believes the
    model supports: the role's config says the endpoint honours it."""

    def _prepare_response_format(
        self, lm: Any, lm_kwargs: dict[str, Any], signature: type[dspy.Signature]
    ) -> None:
        lm_kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": signature.__name__,
                "schema": output_schema(signature),
                "strict": True,
            },
        }


def output_schema(signature: type[dspy.Signature]) -> dict[str, Any]:
    """The JSON schema of a signature's output fields (closed, every field required)."""
    return copy.deepcopy(_schema(signature))


@lru_cache(maxsize=64)
def _schema(signature: type[dspy.Signature]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        name: (field.annotation, ...) for name, field in signature.output_fields.items()
    }
    model = create_model(signature.__name__, __config__=ConfigDict(extra="forbid"), **fields)
    return model.model_json_schema()


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


def install() -> bool:
    """Point DSPy's adapter modules at the cached versions (idempotent). On a DSPy version
    these were not checked against, nothing is patched and a warning says so once."""
    global _installed, _original_system_message
    if _installed:
        return True
    if not tested_version():
        _warn_untested("its adapters are left unpatched")
        return False
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
    return True


def installed() -> bool:
    return _installed


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
