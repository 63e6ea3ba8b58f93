"""Fake OpenAI-compatible chat-completions server for tests and benchmarks.

Why this exists: the pipeline talks to LLMs through DSPy -> LiteLLM -> the
OpenAI HTTP API.  Mocking at the Python level would skip exactly the layers
whose behaviour we care about in integration tests (HTTP retries, rate-limit
handling, connection errors, response parsing, concurrency).  This module runs
a real HTTP server on loopback that speaks just enough of the OpenAI schema and
of DSPy's ChatAdapter / JSONAdapter output conventions for a real
``dspy.LM("openai/...", api_base=srv.base_url)`` to work against it, while
letting tests inject failures deterministically.  It never reaches the network.

Typical use::

    with FakeLLMServer(latency=0.05, script=["429", "ok"]) as srv:
        lm = dspy.LM("openai/fake", api_base=srv.base_url, api_key="x", cache=False)
        ...
        assert srv.request_count == 2

It can also run as a subprocess (benchmarks, end-to-end tests)::

    python tests/fake_llm.py --port 0 --latency 0.2

which prints the base URL on the first line of stdout and serves until
SIGTERM/SIGINT.

Only aiohttp and the standard library are imported so the subprocess starts
fast and the module does not depend on DSPy being importable.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import collections
import contextlib
import hashlib
import json
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Self

from aiohttp import web

__all__ = ["VALID_OUTCOMES", "FakeLLMServer", "Responder", "build_answer", "main"]

Responder = Callable[[dict[str, Any]], str | None]
"""Hook type: receives the parsed request body, returns raw content or None."""

VALID_OUTCOMES: tuple[str, ...] = (
    "ok",
    "429",
    "500",
    "502",
    "503",
    "malformed",
    "length",
    "reset",
    "slow:N",
)
"""Documented script outcomes (any other 3-digit 4xx/5xx status string is accepted too)."""

_LOOPBACK = "127.0.0.1"
_FIELD_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_CHAT_REQUIREMENTS = "Respond with the corresponding output fields"
_JSON_REQUIREMENTS = "Respond with a JSON object in the following order of fields:"
_OUTPUT_FIELDS_HEADER = "Your output fields are:"
_FIELD_LINE = re.compile(r"^\s*\d+\.\s+`(\w+)`\s+\((.*)$")
_SCHEMA_NOTE = re.compile(
    r"\{(\w+)\}\s+# note: the value you produce must adhere to the JSON schema: (.*)$"
)
_MALFORMED_BODY = (
    b'{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"index": 0, "messa'
)
"""A truncated JSON document: HTTP 200 whose body clients cannot parse."""
_ERROR_TYPES: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


# --------------------------------------------------------------------------- #
# Answer generation (pure functions, usable without a running server)
# --------------------------------------------------------------------------- #


def _message_text(message: dict[str, Any]) -> str:
    """Flatten an OpenAI message's content (str or list of parts) to text.

    Why: DSPy sends plain strings, but other clients (and multimodal inputs)
    send a list of ``{"type": "text", "text": ...}`` parts; both must count.
    """
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return str(content)


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the request's messages, tolerating a missing or malformed list."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict)]


def request_hash(body: dict[str, Any], choice_index: int = 0) -> str:
    """Short, stable hash of the parts of a request that define its answer.

    Why: answers must be deterministic (reproducible tests) yet differ between
    prompts, temperatures, seeds and ``n`` so that deduplication and caching
    logic in the pipeline can be exercised meaningfully.
    """
    key = {
        "model": body.get("model"),
        "messages": body.get("messages"),
        "temperature": body.get("temperature"),
        "n": body.get("n"),
        "seed": body.get("seed"),
    }
    if choice_index:
        key["choice"] = choice_index
    blob = json.dumps(key, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:6]


def _sentence(h: str, field: str | None = None) -> str:
    """Deterministic English sentence tagged with the request hash."""
    number = int(h, 16) % 100
    subject = field.replace("_", " ") if field else "result"
    return f"Answer {h}: the {subject} is {number}."


def _split_type_suffix(rest: str) -> str | None:
    """Extract ``TYPE`` from ``TYPE): desc`` where TYPE may contain brackets/quotes.

    Why: DSPy renders ``1. `name` (Literal['a', 'b']): desc``; a naive regex
    breaks on descriptions or literal values that contain parentheses.
    """
    depth = 0
    quote: str | None = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            if ch == ")" and depth == 0:
                return rest[:i].strip()
            depth -= 1
    return None


def _parse_output_field_types(system: str) -> dict[str, str]:
    """Map output field name -> DSPy type name from "Your output fields are:"."""
    types: dict[str, str] = {}
    if _OUTPUT_FIELDS_HEADER not in system:
        return types
    section = system.split(_OUTPUT_FIELDS_HEADER, 1)[1]
    for line in section.splitlines():
        if line.startswith("All interactions will be structured"):
            break
        match = _FIELD_LINE.match(line)
        if match:
            type_name = _split_type_suffix(match.group(2))
            if type_name:
                types[match.group(1)] = type_name
    return types


def _parse_schema_notes(system: str) -> dict[str, dict[str, Any]]:
    """Map field name -> JSON schema from DSPy's "# note: ... JSON schema:" hints.

    Why: for pydantic models and other complex types the type name alone
    (e.g. ``M``) is not enough to produce a value that DSPy will validate.
    ChatAdapter writes the schema raw; JSONAdapter embeds it in a JSON string,
    so lines that do not parse directly are decoded as ``"key": "value"`` first.
    """
    notes: dict[str, dict[str, Any]] = {}
    for raw_line in system.splitlines():
        if "# note: the value you produce must adhere to the JSON schema" not in raw_line:
            continue
        candidates = [raw_line]
        stripped = raw_line.strip().rstrip(",")
        try:
            decoded = json.loads("{" + stripped + "}")
            candidates.extend(v for v in decoded.values() if isinstance(v, str))
        except ValueError:
            pass
        for candidate in candidates:
            match = _SCHEMA_NOTE.search(candidate)
            if not match:
                continue
            try:
                schema = json.loads(match.group(2))
            except ValueError:
                continue
            if isinstance(schema, dict):
                notes[match.group(1)] = schema
                break
    return notes


class _Unknown(Exception):
    """Raised when a type name cannot be turned into a value."""


def _value_from_type_node(node: ast.expr, h: str, field: str) -> Any:
    """Produce an example value for a DSPy type-name AST (``list[int]``, ...)."""
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = node.id if isinstance(node, ast.Name) else node.attr
        simple: dict[str, Any] = {
            "str": _sentence(h, field),
            "Reasoning": _sentence(h, field),
            "Any": _sentence(h, field),
            "int": 4,
            "float": 0.8,
            "bool": True,
            "NoneType": None,
            "None": None,
            "list": [],
            "List": [],
            "dict": {},
            "Dict": {},
        }
        if name in simple:
            return simple[name]
        raise _Unknown(name)
    if isinstance(node, ast.Subscript):
        base = (
            node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        )
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Literal":
            first = args[0]
            if isinstance(first, ast.Constant):
                return first.value
            raise _Unknown("Literal")
        if base in ("Union", "Optional"):
            non_none = [a for a in args if not _is_none_node(a)]
            return _value_from_type_node(non_none[0], h, field) if non_none else None
        if base in ("list", "List", "set", "Set", "frozenset", "Sequence"):
            return [_value_from_type_node(args[0], h, field)]
        if base in ("tuple", "Tuple"):
            return [
                _value_from_type_node(a, h, field) for a in args if not isinstance(a, ast.Constant)
            ]
        if base in ("dict", "Dict", "Mapping"):
            return {}
        raise _Unknown(base)
    raise _Unknown(ast.dump(node))


def _is_none_node(node: ast.expr) -> bool:
    """True for ``None`` / ``NoneType`` members of a Union."""
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    return isinstance(node, ast.Name) and node.id in ("NoneType", "None")


def _value_from_schema(
    schema: dict[str, Any], h: str, field: str, defs: dict[str, Any] | None = None, depth: int = 0
) -> Any:
    """Produce an example value satisfying a (simple) JSON schema.

    Why: DSPy structured outputs (JSONAdapter ``json_schema`` mode and
    pydantic-typed fields) validate replies against a schema; returning a
    conforming value lets tests drive those code paths end to end.
    """
    if depth > 20:
        return None
    defs = {**(defs or {}), **schema.get("$defs", {}), **schema.get("definitions", {})}
    if "$ref" in schema:
        ref_name = str(schema["$ref"]).rsplit("/", 1)[-1]
        target = defs.get(ref_name)
        return (
            _value_from_schema(target, h, field, defs, depth + 1)
            if isinstance(target, dict)
            else None
        )
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            chosen = non_null[0] if non_null else options[0]
            return _value_from_schema(chosen, h, field, defs, depth + 1)
    schema_type = schema.get("type")
    if isinstance(schema_type, list):
        non_null_types = [t for t in schema_type if t != "null"]
        schema_type = non_null_types[0] if non_null_types else "null"
    if schema_type == "string":
        return _sentence(h, field)
    if schema_type == "integer":
        return int(_clamp(4, schema))
    if schema_type == "number":
        return float(_clamp(0.8, schema))
    if schema_type == "boolean":
        return True
    if schema_type == "null":
        return None
    if schema_type == "array":
        items = schema.get("items")
        count = max(1, int(schema.get("minItems", 1)))
        if isinstance(items, dict):
            return [_value_from_schema(items, h, field, defs, depth + 1) for _ in range(count)]
        return []
    if schema_type == "object" or "properties" in schema:
        props = schema.get("properties")
        if isinstance(props, dict):
            return {
                name: _value_from_schema(sub, h, name, defs, depth + 1)
                for name, sub in props.items()
                if isinstance(sub, dict)
            }
        return {}
    return _sentence(h, field)


def _clamp(value: float, schema: dict[str, Any]) -> float:
    """Respect numeric bounds so pydantic constraints (ge/le) validate."""
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if isinstance(low, (int, float)) and value < low:
        value = low if "minimum" in schema else low + 1
    if isinstance(high, (int, float)) and value > high:
        value = high if "maximum" in schema else high - 1
    return value


def _field_value(field: str, type_name: str | None, schema: dict[str, Any] | None, h: str) -> Any:
    """Pick a Python value for one output field from its type name or schema."""
    if type_name:
        try:
            node = ast.parse(type_name, mode="eval").body
            return _value_from_type_node(node, h, field)
        except (SyntaxError, _Unknown, IndexError, ValueError):
            pass
    if schema:
        return _value_from_schema(schema, h, field)
    return _sentence(h, field)


def _render_chat_value(value: Any) -> str:
    """Render a value the way DSPy's ChatAdapter expects to parse it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _requested_fields(
    body: dict[str, Any],
) -> tuple[str, list[str], dict[str, str], dict[str, dict[str, Any]]]:
    """Work out which DSPy output fields (if any) the request asks for.

    Returns ``(mode, field_names, type_names, schemas)`` where mode is
    ``"chat"`` (ChatAdapter markers), ``"json"`` (JSON mode / JSONAdapter) or
    ``"plain"``.
    """
    messages = _messages(body)
    system = "\n".join(
        _message_text(m) for m in messages if m.get("role") in ("system", "developer")
    )
    user_messages = [m for m in messages if m.get("role") == "user"]
    last_user = _message_text(user_messages[-1]) if user_messages else ""
    types = _parse_output_field_types(system)
    schemas = _parse_schema_notes(system)

    response_format = body.get("response_format")
    format_type = response_format.get("type") if isinstance(response_format, dict) else None
    json_mode = format_type in ("json_object", "json_schema") or _JSON_REQUIREMENTS in last_user

    if json_mode:
        names: list[str] = []
        if format_type == "json_schema":
            schema = (response_format or {}).get("json_schema", {}).get("schema")
            if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
                names = list(schema["properties"])
                top_defs = schema.get("$defs", {})
                for name, sub in schema["properties"].items():
                    if isinstance(sub, dict):
                        schemas[name] = {**sub, "$defs": top_defs} if top_defs else sub
                # The structured schema is authoritative; prefer it over type names.
                types = {k: v for k, v in types.items() if k not in schemas}
        if not names and _JSON_REQUIREMENTS in last_user:
            sentence = last_user.split(_JSON_REQUIREMENTS, 1)[1].split("\n", 1)[0]
            names = re.findall(r"`(\w+)`", sentence)
        if not names:
            names = list(types)
        return "json", names, types, schemas

    if _CHAT_REQUIREMENTS in last_user:
        sentence = last_user.split(_CHAT_REQUIREMENTS, 1)[1]
        names = [n for n in _FIELD_HEADER.findall(sentence) if n != "completed"]
        if names:
            return "chat", names, types, schemas
    if types and "[[ ## completed ## ]]" in system:
        return "chat", list(types), types, schemas
    return "plain", [], types, schemas


def build_answer(body: dict[str, Any], choice_index: int = 0) -> str:
    """Build the default assistant content for a chat-completions request.

    Why public: benchmarks and tests sometimes want to know what the fake will
    answer (or wrap it inside a custom ``responder``) without an HTTP call.
    """
    h = request_hash(body, choice_index)
    mode, names, types, schemas = _requested_fields(body)
    if mode == "json":
        if not names:
            return json.dumps({"answer": _sentence(h)}, ensure_ascii=False)
        obj = {name: _field_value(name, types.get(name), schemas.get(name), h) for name in names}
        return json.dumps(obj, ensure_ascii=False)
    if mode == "chat":
        sections = []
        for name in names:
            value = _field_value(name, types.get(name), schemas.get(name), h)
            sections.append(f"[[ ## {name} ## ]]\n{_render_chat_value(value)}")
        sections.append("[[ ## completed ## ]]")
        return "\n\n".join(sections)
    return _sentence(h)


def _truncate(content: str) -> str:
    """Cut an answer roughly in half, dropping DSPy's completion marker.

    Why: simulates ``finish_reason == "length"`` where the model ran out of
    tokens mid-answer, so parsers see an incomplete reply.
    """
    content = content.split("[[ ## completed ## ]]", 1)[0].rstrip()
    return content[: max(1, len(content) // 2)]


def _count_tokens(text: str) -> int:
    """Crude whitespace token count; good enough for usage accounting tests."""
    return len(text.split())


def _normalize_outcome(outcome: str | int) -> str:
    """Validate a script entry early so typos fail the test, not silently pass."""
    text = str(outcome).strip().lower()
    if text in ("ok", "200", "malformed", "length", "reset"):
        return "ok" if text == "200" else text
    if text.startswith("slow:"):
        try:
            seconds = float(text.split(":", 1)[1])
        except ValueError as exc:
            raise ValueError(
                f"invalid slow outcome {outcome!r}; expected 'slow:<seconds>'"
            ) from exc
        if seconds < 0:
            raise ValueError(f"invalid slow outcome {outcome!r}; seconds must be >= 0")
        return text
    if text.isdigit() and len(text) == 3 and 400 <= int(text) <= 599:
        return text
    raise ValueError(
        f"unknown fake LLM outcome {outcome!r}; "
        f"valid: {', '.join(VALID_OUTCOMES)} or any 4xx/5xx code"
    )


# --------------------------------------------------------------------------- #
# Server
# --------------------------------------------------------------------------- #


class FakeLLMServer:
    """OpenAI-compatible fake LLM served by aiohttp on a background thread.

    Why a background thread with its own loop: tests and DSPy code are mostly
    synchronous (and DSPy may run its own event loops), so the server must not
    share the caller's loop.  All behaviour knobs are plain attributes read on
    every request, so tests can change them while the server is running.

    Per-request decision order: ``status_override`` > next ``script`` entry >
    random 500/429 (``fail_rate_500`` then ``fail_rate_429``) > normal answer.
    Every chat response leaves ``latency`` (+ uniform ``jitter``) seconds after its request
    arrived, the answer's own building included; ``slow:N`` waits N seconds instead.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        model: str = "fake",
        latency: float = 0.0,
        jitter: float = 0.0,
        fail_rate_500: float = 0.0,
        fail_rate_429: float = 0.0,
        retry_after: float | None = None,
        seed: int | None = 0,
        script: Iterable[str | int] | None = None,
        status_override: int | None = None,
        responder: Responder | None = None,
        shutdown_timeout: float = 0.5,
    ) -> None:
        """Configure the server; nothing is bound until ``start()``.

        Args:
            port: TCP port on 127.0.0.1; 0 picks a free port.
            model: model id advertised by ``GET /v1/models``.
            latency: seconds slept (asyncio) before each chat response.
            jitter: extra uniform random delay in ``[0, jitter]`` seconds.
            fail_rate_500: probability of a random HTTP 500.
            fail_rate_429: probability of a random HTTP 429.
            retry_after: Retry-After seconds on 429 responses; None omits it.
            seed: seed of the ``random.Random`` used for failures/jitter.
            script: forced outcomes consumed one per chat request.
            status_override: if set, every request returns this status.
            responder: hook returning raw content (or None for the default).
            shutdown_timeout: seconds ``stop()`` waits for in-flight requests.
        """
        self.model: str = model
        self.latency: float = latency
        self.jitter: float = jitter
        self.fail_rate_500: float = fail_rate_500
        self.fail_rate_429: float = fail_rate_429
        self.retry_after: float | None = retry_after
        self.status_override: int | None = status_override
        self.responder: Responder | None = responder
        self.rng: random.Random = random.Random(seed)
        self.shutdown_timeout: float = shutdown_timeout
        self._requested_port: int = port
        self._lock = threading.Lock()
        self._script: collections.deque[str] = collections.deque()
        if script is not None:
            self.script = script  # type: ignore[assignment]
        self._request_count = 0
        self._requests: list[dict[str, Any]] = []
        self._outcomes: list[str] = []
        self._by_model: collections.Counter[str] = collections.Counter()
        self._in_flight = 0
        self._max_in_flight = 0
        self._count_changed = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Bind the socket and start serving; returns self once ready.

        Why block until bound: callers need ``base_url`` immediately and must
        never race the first request against server startup.
        """
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="fake-llm-server", daemon=True
        )
        self._loop, self._thread = loop, thread
        thread.start()
        future = asyncio.run_coroutine_threadsafe(self._astart(), loop)
        try:
            future.result(timeout=10)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def stop(self) -> None:
        """Stop serving, close connections, stop the loop and join the thread.

        Idempotent, so it is safe in ``finally`` blocks and fixtures.
        """
        loop, runner = self._loop, self._runner
        if loop is None:
            return
        if runner is not None and loop.is_running():
            future = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
            # Shutdown must proceed (stop the loop, join the thread) regardless.
            with contextlib.suppress(Exception):
                future.result(timeout=self.shutdown_timeout + 10)
        self._runner = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        """Stop the event loop and join its thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        self._loop = None
        self._thread = None

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        """Thread body: run the private loop, then tidy and close it."""
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _astart(self) -> None:
        """Create the aiohttp app and bind it to loopback."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", self._handle_chat)
            app.router.add_get(f"{prefix}/models", self._handle_models)
        app.router.add_get("/health", self._handle_health)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, _LOOPBACK, self._requested_port, reuse_address=True)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    def __enter__(self) -> Self:
        """Start on entering a ``with`` block."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Always stop, even if the test body failed."""
        self.stop()

    # ------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """Bound TCP port (only valid after ``start()``)."""
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._port

    @property
    def url(self) -> str:
        """Root URL without the ``/v1`` prefix (for ``/health``)."""
        return f"http://{_LOOPBACK}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.url}/v1"

    @property
    def running(self) -> bool:
        """True between a successful ``start()`` and ``stop()``."""
        return self._runner is not None

    @property
    def request_count(self) -> int:
        """Number of chat-completion requests received (any outcome)."""
        with self._lock:
            return self._request_count

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Snapshot of parsed chat-completion request bodies, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def outcomes(self) -> list[str]:
        """Snapshot of the outcome chosen for each chat request (``"ok"``, ``"429"``...)."""
        with self._lock:
            return list(self._outcomes)

    @property
    def max_concurrency(self) -> int:
        """Highest number of chat requests in flight at once (for parallelism tests)."""
        with self._lock:
            return self._max_in_flight

    @property
    def script(self) -> list[str]:
        """Remaining forced outcomes (copy); assign a list to replace them."""
        with self._lock:
            return list(self._script)

    @script.setter
    def script(self, outcomes: Iterable[str | int]) -> None:
        normalized = [_normalize_outcome(o) for o in outcomes]
        with self._lock:
            self._script = collections.deque(normalized)

    def enqueue(self, *outcomes: str | int) -> None:
        """Append forced outcomes to the script (thread-safe)."""
        normalized = [_normalize_outcome(o) for o in outcomes]
        with self._lock:
            self._script.extend(normalized)

    def count_by_model(self) -> dict[str, int]:
        """Chat requests per requested model id."""
        with self._lock:
            return dict(self._by_model)

    def reset(self) -> None:
        """Clear counters and recordings (behaviour settings are kept)."""
        with self._lock:
            self._request_count = 0
            self._requests.clear()
            self._outcomes.clear()
            self._by_model.clear()
            self._max_in_flight = self._in_flight

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` chat requests arrived; False on timeout.

        Why: lets tests synchronise with background workers without sleeps.
        """
        deadline = time.monotonic() + timeout
        with self._count_changed:
            while self._request_count < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._count_changed.wait(remaining)
            return True

    # ------------------------------------------------------------ handlers

    def _override_response(self) -> web.Response | None:
        """Response forced by ``status_override`` (None when not set / 200)."""
        status = self.status_override
        if status is None or int(status) == 200:
            return None
        return self._error_response(int(status))

    async def _handle_health(self, request: web.Request) -> web.Response:
        """Liveness probe; honours ``status_override`` to simulate a down server."""
        return self._override_response() or web.json_response(
            {"status": "ok", "requests": self.request_count}
        )

    async def _handle_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models`` listing the single fake model."""
        override = self._override_response()
        if override is not None:
            return override
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "created": 0, "owned_by": "fake-llm"}
                ],
            }
        )

    def _record(self, body: dict[str, Any]) -> None:
        """Count and record one chat request (called on the loop thread)."""
        with self._count_changed:
            self._request_count += 1
            self._requests.append(body)
            self._by_model[str(body.get("model", "<none>"))] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._count_changed.notify_all()

    def _choose_outcome(self) -> str:
        """Apply the decision order: override > script > random failures > ok."""
        status = self.status_override
        if status is not None and int(status) != 200:
            return str(int(status))
        with self._lock:
            if self._script:
                return self._script.popleft()
            roll = self.rng.random()
        if roll < self.fail_rate_500:
            return "500"
        if roll < self.fail_rate_500 + self.fail_rate_429:
            return "429"
        return "ok"

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions`` with scripted/random failure injection.

        Why the answer is built before the sleep: ``latency`` is the time from the request's
        arrival to its response, as a real server's latency includes its own work. Built
        after the sleep, the answer (parsing DSPy's prompt, hashing, JSON) added the server's
        CPU time, and its queueing under load, to every call: about 10 ms per call at 320
        calls/s, which the throughput benchmarks then charged to the client."""
        arrived = asyncio.get_running_loop().time()
        raw = await request.read()
        try:
            parsed = json.loads(raw.decode("utf-8") or "null")
        except (ValueError, UnicodeDecodeError):
            parsed = None
        body: dict[str, Any] = (
            parsed if isinstance(parsed, dict) else {"_raw": raw.decode("utf-8", "replace")}
        )
        self._record(body)
        try:
            outcome = self._choose_outcome()
            with self._lock:
                self._outcomes.append(outcome)
            if outcome.startswith("slow:"):
                delay = float(outcome.split(":", 1)[1])
            else:
                delay = self._latency()
            answer = self._answer(outcome, parsed, body)
            wait = arrived + delay - asyncio.get_running_loop().time()
            if wait > 0:
                await asyncio.sleep(wait)
            if outcome == "reset":
                return self._drop_connection(request)
            if isinstance(answer, dict):
                return await self._stream(request, answer, body)
            return answer
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(
        self, outcome: str, parsed: object, body: dict[str, Any]
    ) -> web.Response | dict[str, Any] | None:
        """The response for an outcome, ready to send: a streamed request's is its payload
        (written as events after the sleep); a reset has none."""
        if outcome == "reset":
            return None
        if outcome.isdigit():
            return self._error_response(int(outcome))
        if not isinstance(parsed, dict):
            return self._error_response(400, "request body is not a JSON object")
        if outcome == "malformed":
            return web.Response(status=200, body=_MALFORMED_BODY, content_type="application/json")
        try:
            payload = self._completion_payload(body, truncated=outcome == "length")
        except Exception as exc:  # noqa: BLE001 - surface responder bugs as HTTP 500
            return self._error_response(500, f"responder raised {type(exc).__name__}: {exc}")
        if body.get("stream"):
            return payload
        return web.json_response(payload)

    def _latency(self) -> float:
        """``latency`` plus optional jitter, in seconds."""
        delay = max(0.0, float(self.latency or 0.0))
        if self.jitter:
            with self._lock:
                delay += self.rng.uniform(0.0, float(self.jitter))
        return delay

    @staticmethod
    def _drop_connection(request: web.Request) -> web.Response:
        """Abort the TCP connection with an RST, sending no HTTP response at all.

        Why SO_LINGER(1, 0): a plain close sends FIN, which some clients treat
        as a clean EOF; the RST makes the client see a real connection reset.
        The returned response is never written (aiohttp swallows the write
        error on a closed transport).
        """
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            transport.abort()
        return web.Response(status=500)

    def _error_response(self, status: int, message: str | None = None) -> web.Response:
        """OpenAI-style error body; adds Retry-After on 429 when configured."""
        err_type, code = _ERROR_TYPES.get(status, ("server_error", "server_error"))
        headers: dict[str, str] = {}
        if status == 429 and self.retry_after is not None:
            headers["Retry-After"] = f"{float(self.retry_after):g}"
        payload = {
            "error": {
                "message": message or f"Fake LLM server: simulated HTTP {status}",
                "type": err_type,
                "param": None,
                "code": code,
            }
        }
        return web.json_response(payload, status=status, headers=headers)

    def _completion_payload(self, body: dict[str, Any], truncated: bool) -> dict[str, Any]:
        """Build the OpenAI ``chat.completion`` object for a request."""
        n = body.get("n") or 1
        n = max(1, int(n)) if isinstance(n, (int, float)) else 1
        choices: list[dict[str, Any]] = []
        completion_tokens = 0
        for index in range(n):
            content: str | None = None
            responder = self.responder
            if responder is not None:
                content = responder(body)
            if not isinstance(content, str):
                content = build_answer(body, index)
            if truncated:
                content = _truncate(content)
            completion_tokens += _count_tokens(content)
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "length" if truncated else "stop",
                }
            )
        prompt_tokens = sum(_count_tokens(_message_text(m)) for m in _messages(body))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(body.get("model") or self.model),
            "system_fingerprint": "fake-llm",
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @staticmethod
    async def _stream(
        request: web.Request, payload: dict[str, Any], body: dict[str, Any]
    ) -> web.StreamResponse:
        """Minimal SSE streaming (one content chunk per choice) for ``stream=True``.

        Why: some client paths (e.g. DSPy streaming) request SSE; a single
        content delta per choice is enough for them to assemble the answer.
        """
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {k: payload[k] for k in ("id", "created", "model", "system_fingerprint")}
        base["object"] = "chat.completion.chunk"
        for choice in payload["choices"]:
            for delta, finish in (
                ({"role": "assistant", "content": choice["message"]["content"]}, None),
                ({}, choice["finish_reason"]),
            ):
                chunk = {
                    **base,
                    "choices": [
                        {"index": choice["index"], "delta": delta, "finish_reason": finish}
                    ],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        stream_options = body.get("stream_options")
        if isinstance(stream_options, dict) and stream_options.get("include_usage"):
            usage_chunk = {**base, "choices": [], "usage": payload["usage"]}
            await response.write(f"data: {json.dumps(usage_chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options mirroring the constructor's keyword arguments."""
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible LLM server on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 = any free port)")
    parser.add_argument("--model", default="fake", help="model id listed by /v1/models")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds of delay per request")
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="extra uniform random delay (seconds)"
    )
    parser.add_argument("--fail-rate-500", type=float, default=0.0, help="probability of HTTP 500")
    parser.add_argument("--fail-rate-429", type=float, default=0.0, help="probability of HTTP 429")
    parser.add_argument(
        "--retry-after", type=float, default=None, help="Retry-After seconds on 429s"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for failures/jitter")
    parser.add_argument(
        "--status-override", type=int, default=None, help="answer every request with this status"
    )
    parser.add_argument(
        "--script", default="", help="comma-separated forced outcomes, e.g. 429,ok,reset"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve in the foreground; first stdout line is the base URL.

    Why print-and-flush: parent processes (benchmarks, e2e tests) read that
    line to learn the port chosen for ``--port 0``.
    """
    args = _parse_args(argv)
    script = [s for s in (part.strip() for part in args.script.split(",")) if s]
    server = FakeLLMServer(
        port=args.port,
        model=args.model,
        latency=args.latency,
        jitter=args.jitter,
        fail_rate_500=args.fail_rate_500,
        fail_rate_429=args.fail_rate_429,
        retry_after=args.retry_after,
        seed=args.seed,
        script=script,
        status_override=args.status_override,
    )
    stop_event = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    server.start()
    try:
        print(server.base_url, flush=True)
        while not stop_event.wait(0.2):
            pass
    finally:
        server.stop()
        print(
            f"fake-llm stopped: {server.request_count} chat requests, "
            f"by model {server.count_by_model()}",
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
