"""A small DSPy engine for OpenAI-compatible chat endpoints (vLLM, llama.cpp server, OpenAI).

Why not LiteLLM: its per-call CPU caps a 2-core machine at a few dozen calls per second
whatever the endpoint's speed (benchmarks/RESULTS.md). This engine is one HTTP POST per
attempt: DSPy's own lm15 dialect turns the ``Request`` into the chat body (the same body
LiteLLM was given) and parses the reply, so the rendered prompt, the cache key (computed from
the ``Request`` before any engine) and the ``Response`` are unchanged.

What it adds over a bare POST:

- ``max_tokens`` on the wire: lm15's dialect writes ``max_completion_tokens``, which
  llama.cpp's server ignores (vLLM and OpenAI accept ``max_tokens``).
- The key is read from the environment variable named in the settings at each call, put in
  the Authorization header and nowhere else: never stored, logged or put in an error.
- A per-call timeout, and retries with exponential backoff and jitter on 429, 408, 500,
  502, 503, 504, connection errors and timeouts; a Retry-After header (seconds) is honoured.
  The ``dspy.LM`` around this engine is built with ``num_retries=0``, so this is the only
  retry loop. Exhausted retries raise DSPy's canonical ``lm15`` errors.
- A pool of replicas (modules/lm/pool.py) when ``api_base`` lists several: each attempt
  asks the pool which server to send to, and an attempt that failed on one replica is sent
  to another in rotation at once, without spending a retry. The retries count rounds: a
  backoff is slept only when no replica in rotation is left untried for the call.

``OpenAICompatEngine`` (sync, httpx) serves plain calls (``master lm check``, optimizers);
``AsyncOpenAICompatEngine`` (aiohttp, one session per event loop) serves the simulation.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
from dspy.lm15 import (
    BillingError,
    Request,
    Response,
    ServerError,
    TransportError,
    response_from_openai_chat,
    response_to_events,
)
from dspy.lm15 import TimeoutError as LMTimeoutError

from modules.lm.dspy_internals import ChatDialect, http_engine_usable, http_error
from modules.lm.pool import Failure, Pool, Replica

#: LiteLLM prefixes whose models this engine serves: their endpoints speak OpenAI's chat API.
OPENAI_COMPATIBLE_PREFIXES = ("openai", "hosted_vllm")
OPENAI_BASE = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
PROVIDER = "openai-compatible"
#: GET /models of a replica out of rotation: a server that answers at all is back
PROBE_TIMEOUT_S = 5.0


def serves(model: str) -> bool:
    """True for ``openai/...`` and ``hosted_vllm/...`` model ids (on a tested DSPy)."""
    head, sep, rest = model.partition("/")
    return bool(sep and rest) and head in OPENAI_COMPATIBLE_PREFIXES and http_engine_usable()


def wire_model(model: str) -> str:
    """The model id the server knows: the LiteLLM provider prefix removed."""
    head, sep, rest = model.partition("/")
    return rest if sep and head in OPENAI_COMPATIBLE_PREFIXES else model


def _schema_in_json_object(data: dict[str, Any]) -> None:
    """OpenAI's {type: json_schema, json_schema: {schema}} as {type: json_object, schema}: the
    spelling llama-cpp-python's server constrains decoding with (it refuses json_schema)."""
    fmt = data.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        data["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}


class _Policy:
    """Endpoint, key variable, timeout and retry policy shared by the sync and async engines."""

    def __init__(
        self,
        api_base: str | Sequence[str] | None,
        api_key_env: str | None,
        timeout_s: float,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        structured_output: str | None = None,
        max_concurrency: int | None = None,
        pool: Pool | None = None,
    ) -> None:
        bases = (
            [api_base or OPENAI_BASE]
            if api_base is None or isinstance(api_base, str)
            else list(api_base)
        )
        #: shared by this role's sync and async engines (factory.py): one view of the servers
        self.pool = pool or Pool(bases, max_concurrency)
        self.structured_output = structured_output
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # DSPy's request_kwargs builds this conversion-only dialect anew for every call
        # (credential binding, compat resolution); it holds
        # no per-call state, so one serves every call and thread
        self._dialect = ChatDialect()

    def __repr__(self) -> str:
        bases = [r.base for r in self.pool.replicas]
        return f"{type(self).__name__}(replicas={bases!r}, key_env={self.api_key_env!r})"

    @staticmethod
    def url(replica: Replica) -> str:
        return replica.base + "/chat/completions"

    def after_failure(
        self, replica: Replica, error: Exception, sent: float, tried: list[Replica], attempt: int
    ) -> float | None:
        """After a failed attempt: None to send the call to another replica in rotation at
        once (`tried` gets this one), else the seconds to wait before the next round; raises
        when the call is over (an error not worth retrying, or the retries spent)."""
        self.pool.failed(replica, failure_kind(error), sent)
        if not _retryable(error):
            raise error
        tried.append(replica)
        if self.pool.others_up(tried):
            return None
        if attempt >= self.max_retries:
            raise self.exhausted(error) from error
        return self.delay(attempt, error)

    def exhausted(self, error: Exception) -> Exception:
        """The error a call raises when its retries are spent: as it came, or, when every
        replica of a pool is out of rotation, one that says so first (the breaker's line)."""
        if len(self.pool.replicas) > 1 and self.pool.all_down():
            return type(error)(f"{self.pool.describe_down()}; last: {error}", provider=PROVIDER)
        return error

    def body(self, request: Request) -> bytes:
        """The chat body DSPy's request_kwargs(request, "chat") gives, model and max_tokens
        as the server takes them (tests/unit/lm/test_http_engine.py holds them equal)."""
        if "n" in (request.config.extensions or {}):
            raise ValueError("A typed Request produces one Response; do not put n in extensions.")
        data = self._dialect.chat_body(request)
        if "max_completion_tokens" in data:
            data["max_tokens"] = data.pop("max_completion_tokens")
        data["model"] = wire_model(request.model)
        if self.structured_output == "json_object":
            _schema_in_json_object(data)
        try:  # faster than json.dumps, the same JSON value, as DSPy's Request refuses
            return orjson.dumps(data)  # NaN and non-JSON values (tests/unit/lm/test_http_engine.py)
        except orjson.JSONEncodeError:  # what orjson refuses (a lone surrogate) fails as before
            return json.dumps(data, ensure_ascii=False).encode("utf-8")

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    def delay(self, attempt: int, error: Exception) -> float:
        """Retry-After when the server gave one, else exponential backoff with jitter (a random
        point in the upper half of the step, so many clients that failed together spread out)."""
        hint = getattr(error, "retry_after", None)
        if hint is not None:
            return min(float(hint), 600.0)
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    def response(self, request: Request, status: int, raw: bytes, retry_after: Any) -> Response:
        """The Response of a 200, or the canonical error of anything else."""
        if status == 200:
            try:
                body = _loads(raw)
            except ValueError:
                raise ServerError(
                    "the endpoint answered 200 with a body that is not JSON",
                    provider=PROVIDER,
                    status=status,
                ) from None
            return response_from_openai_chat(body, model=request.model)
        raise _http_error(status, raw, retry_after)


def _loads(raw: bytes) -> Any:
    """json.loads, by orjson where it can (a third of the time); what orjson refuses and the
    standard library reads (NaN, a lone surrogate escape) still parses as before."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _http_error(status: int, raw: bytes, retry_after: Any) -> Exception:
    message, code = f"HTTP {status}", None
    try:
        detail = json.loads(raw).get("error")
        if isinstance(detail, dict):
            message = f"HTTP {status}: {str(detail.get('message') or '')[:300]}"
            code = detail.get("code") or detail.get("type")
        elif isinstance(detail, str):
            message = f"HTTP {status}: {detail[:300]}"
    except (ValueError, AttributeError):
        pass
    if code == "insufficient_quota":  # OpenAI's quota failure travels as a 429: never retry it
        return BillingError(message, provider=PROVIDER, provider_code=code, status=status)
    return http_error(
        status, message, PROVIDER, str(code) if code is not None else None, retry_after
    )


def _retryable(error: Exception) -> bool:
    if isinstance(error, (TransportError, LMTimeoutError)):
        return True
    if isinstance(error, BillingError):
        return False
    return getattr(error, "status", None) in RETRY_STATUSES


def failure_kind(error: Exception) -> Failure:
    """How an attempt's error reads to the pool (modules/lm/pool.py)."""
    if isinstance(error, (TransportError, LMTimeoutError)):
        return "down"
    status = getattr(error, "status", None)
    if status == 429 and not isinstance(error, BillingError):
        return "overloaded"
    if isinstance(status, int) and status >= 500:
        return "server_error"
    return "other"


class OpenAICompatEngine(_Policy):
    """Synchronous engine: one httpx client, thread-safe, retries with time.sleep."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._lock = threading.Lock()

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(timeout=self.timeout_s)
            return self._client

    def _once(self, request: Request, body: bytes, replica: Replica) -> Response:
        import httpx

        try:
            resp = self._http().post(self.url(replica), content=body, headers=self.headers())
        except httpx.TimeoutException as exc:
            raise LMTimeoutError(
                f"no answer within {self.timeout_s:g} s", provider=PROVIDER
            ) from exc
        except httpx.TransportError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}", provider=PROVIDER) from exc
        return self.response(
            request, resp.status_code, resp.content, resp.headers.get("retry-after")
        )

    def probe(self, base: str) -> bool:
        """Whether a replica out of rotation answers GET /models (any status below 500)."""
        try:
            resp = self._http().get(base + "/models", headers=self.headers(),
                                    timeout=PROBE_TIMEOUT_S)  # fmt: skip
        except Exception:  # noqa: BLE001 - no answer in any way: still down
            return False
        return resp.status_code < 500

    def complete(self, request: Request) -> Response:
        body = self.body(request)
        attempt, tried = 0, []
        while True:
            replica = self.pool.acquire_sync(tried, self.probe)
            sent = self.pool.clock()
            try:
                response = self._once(request, body, replica)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # interrupted: the slot is given back
                    self.pool.release(replica)
                    raise
                wait = self.after_failure(replica, exc, sent, tried, attempt)
                if wait is None:
                    continue  # failover: another replica takes the call at once
                time.sleep(wait)
                attempt, tried = attempt + 1, []
            else:
                self.pool.succeeded(replica, self.pool.clock() - sent, sent)
                return response

    def stream(self, request: Request) -> Iterator[Any]:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class AsyncOpenAICompatEngine(_Policy):
    """Async engine: one aiohttp session per event loop, retries with asyncio.sleep."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions: dict[asyncio.AbstractEventLoop, Any] = {}
        _async_engines.add(self)

    def _session(self) -> Any:
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for old in [k for k in self._sessions if k.is_closed()]:
                del self._sessions[old]  # a finished loop's session cannot be used or closed
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            )
            self._sessions[loop] = session
        return session

    async def _once(self, request: Request, body: bytes, replica: Replica) -> Response:
        import aiohttp

        url = self.url(replica)
        try:
            async with self._session().post(url, data=body, headers=self.headers()) as resp:
                status, raw, hint = resp.status, await resp.read(), resp.headers.get("Retry-After")
        except TimeoutError as exc:
            raise LMTimeoutError(
                f"no answer within {self.timeout_s:g} s", provider=PROVIDER
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}", provider=PROVIDER) from exc
        return self.response(request, status, raw, hint)

    async def probe(self, base: str) -> bool:
        """Whether a replica out of rotation answers GET /models (any status below 500)."""
        import aiohttp

        try:
            timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
            async with self._session().get(
                base + "/models", headers=self.headers(), timeout=timeout
            ) as resp:
                return resp.status < 500
        except Exception:  # noqa: BLE001 - no answer in any way: still down
            return False

    async def complete(self, request: Request) -> Response:
        body = self.body(request)
        attempt, tried = 0, []
        while True:
            replica = await self.pool.acquire(tried, self.probe)
            sent = self.pool.clock()
            try:
                response = await self._once(request, body, replica)
            except BaseException as exc:
                if not isinstance(exc, Exception):  # cancelled: the slot is given back
                    self.pool.release(replica)
                    raise
                wait = self.after_failure(replica, exc, sent, tried, attempt)
                if wait is None:
                    continue  # failover: another replica takes the call at once
                await asyncio.sleep(wait)
                attempt, tried = attempt + 1, []
            else:
                self.pool.succeeded(replica, self.pool.clock() - sent, sent)
                return response

    async def stream(self, request: Request) -> Any:
        for event in response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Close this loop's session (call it on the loop that made the calls)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()


_async_engines: weakref.WeakSet[AsyncOpenAICompatEngine] = weakref.WeakSet()


async def close_loop_sessions() -> None:
    """Close every session opened on the running loop: call it before the loop ends."""
    for engine in list(_async_engines):
        await engine.aclose()
