"""Tests of the fake OpenAI-compatible server in ``tests/fake_llm.py``.

Why: integration tests and benchmarks trust this fake to behave like a real
provider (status codes, headers, dropped connections, DSPy-parsable answers).
If the fake silently drifts, those tests would pass or fail for the wrong
reasons, so the fake itself is pinned down here using plain HTTP clients and
the real DSPy adapters.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import aiohttp
import pytest

try:  # Works both with and without a tests/__init__.py package marker.
    from fake_llm import FakeLLMServer, build_answer
except ImportError:  # pragma: no cover - depends on how pytest sets sys.path
    from tests.fake_llm import FakeLLMServer, build_answer

from conftest import PROJECT  # noqa: E402

FAKE_LLM_SCRIPT = PROJECT / "tests" / "fake_llm.py"


# --------------------------------------------------------------------------- #
# Helpers and fixtures
# --------------------------------------------------------------------------- #


def _chat_body(content: str = "Hello there", model: str = "fake", **extra: Any) -> dict[str, Any]:
    """Minimal OpenAI chat-completions request body."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def _post_chat(
    srv: FakeLLMServer, body: dict[str, Any], timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """POST a chat request with urllib; returns (status, headers, raw body).

    Why urllib: an independent, dependency-free client shows the fake speaks
    plain HTTP correctly, not just whatever aiohttp/httpx tolerate.
    HTTP error statuses are returned rather than raised; transport errors raise.
    """
    request = urllib.request.Request(
        f"{srv.base_url}/chat/completions",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json", "Authorization": "Bearer x"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _get(url: str) -> tuple[int, bytes]:
    """GET with urllib, returning (status, body) even for HTTP errors."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def srv() -> Iterator[FakeLLMServer]:
    """A fresh fake server per test, so counters and scripts never leak."""
    with FakeLLMServer(seed=123) as server:
        yield server


@pytest.fixture(scope="module")
def dspy() -> ModuleType:
    """Import DSPy lazily with the offline cost map (never hit the network)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy as dspy_module

    return dspy_module


@pytest.fixture(scope="module")
def qa_signature(dspy: ModuleType) -> type:
    """Signature with a str and an int output field, as the pipeline uses."""

    class QA(dspy.Signature):  # type: ignore[name-defined, misc]
        """Answer the question and rate your confidence."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField(desc="a short answer")
        confidence: int = dspy.OutputField(desc="1 to 5")

    return QA


# --------------------------------------------------------------------------- #
# Basic protocol, counting, recording
# --------------------------------------------------------------------------- #


def test_chat_completion_schema_and_usage(srv: FakeLLMServer) -> None:
    status, _, raw = _post_chat(srv, _chat_body("one two three", temperature=0.3, max_tokens=50))
    assert status == 200
    payload = json.loads(raw)
    assert payload["object"] == "chat.completion"
    assert payload["id"].startswith("chatcmpl-")
    assert isinstance(payload["created"], int)
    assert payload["model"] == "fake"
    choice = payload["choices"][0]
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert choice["message"]["role"] == "assistant"
    assert content.startswith("Answer ")
    usage = payload["usage"]
    assert usage["prompt_tokens"] == 3
    assert usage["completion_tokens"] == len(content.split())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_counting_recording_and_reset(srv: FakeLLMServer) -> None:
    _post_chat(srv, _chat_body("a", model="m1", temperature=0.7, max_tokens=10))
    _post_chat(srv, _chat_body("b", model="m2"))
    _post_chat(srv, _chat_body("c", model="m1"))
    assert _get(f"{srv.base_url}/models")[0] == 200  # not a chat request: not counted
    assert srv.request_count == 3
    assert srv.count_by_model() == {"m1": 2, "m2": 1}
    first = srv.requests[0]
    assert first["model"] == "m1"
    assert first["temperature"] == 0.7
    assert first["max_tokens"] == 10
    assert first["messages"] == [{"role": "user", "content": "a"}]
    assert srv.outcomes == ["ok", "ok", "ok"]

    srv.reset()
    assert srv.request_count == 0
    assert srv.requests == []
    assert srv.count_by_model() == {}


def test_answers_are_deterministic_and_prompt_dependent(srv: FakeLLMServer) -> None:
    def content(body: dict[str, Any]) -> str:
        return json.loads(_post_chat(srv, body)[2])["choices"][0]["message"]["content"]

    assert content(_chat_body("same")) == content(_chat_body("same"))
    assert content(_chat_body("same")) != content(_chat_body("different"))
    assert content(_chat_body("same", temperature=0.0)) != content(
        _chat_body("same", temperature=1.0)
    )


def test_models_and_health_endpoints(srv: FakeLLMServer) -> None:
    status, raw = _get(f"{srv.base_url}/models")
    assert status == 200
    listing = json.loads(raw)
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["fake"]
    assert _get(f"{srv.url}/health") == (200, b'{"status": "ok", "requests": 0}')
    _post_chat(srv, _chat_body("count me"))
    status, raw = _get(f"{srv.url}/health")
    assert status == 200 and json.loads(raw)["requests"] == 1 == srv.request_count
    assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"


# --------------------------------------------------------------------------- #
# DSPy answer formats
# --------------------------------------------------------------------------- #


def test_chat_adapter_round_trip(srv: FakeLLMServer, dspy: ModuleType, qa_signature: type) -> None:
    adapter = dspy.ChatAdapter()
    messages = adapter.format(qa_signature, demos=[], inputs={"question": "What is 2 + 2?"})
    status, _, raw = _post_chat(srv, {"model": "fake", "messages": messages})
    assert status == 200
    content = json.loads(raw)["choices"][0]["message"]["content"]
    assert content.endswith("[[ ## completed ## ]]")
    parsed = adapter.parse(qa_signature, content)
    assert parsed["confidence"] == 4
    assert isinstance(parsed["answer"], str) and parsed["answer"].startswith("Answer ")


def test_rich_field_types_parse(dspy: ModuleType) -> None:
    """Literal/bool/list/pydantic fields get values DSPy validates (both adapters).

    Why no ``from __future__ import annotations`` in this file: these locally
    defined classes must have real (not string) annotations for pydantic.
    """
    from typing import Literal

    from pydantic import BaseModel

    class Item(BaseModel):
        name: str
        count: int

    class Rich(dspy.Signature):  # type: ignore[name-defined, misc]
        """Classify the text."""

        text: str = dspy.InputField()
        label: Literal["positive", "negative"] = dspy.OutputField()
        is_valid: bool = dspy.OutputField()
        tags: list[str] = dspy.OutputField()
        item: Item = dspy.OutputField()
        score: float | None = dspy.OutputField()

    for adapter in (dspy.ChatAdapter(), dspy.JSONAdapter()):
        messages = adapter.format(Rich, demos=[], inputs={"text": "great"})
        parsed = adapter.parse(Rich, build_answer({"model": "fake", "messages": messages}))
        assert parsed["label"] == "positive"
        assert parsed["is_valid"] is True
        assert isinstance(parsed["tags"], list) and parsed["tags"]
        assert isinstance(parsed["item"], Item)
        assert parsed["score"] == pytest.approx(0.8)


def test_json_schema_response_format() -> None:
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "n": {"type": "integer", "minimum": 10},
            "kind": {"type": "string", "enum": ["x", "y"]},
        },
        "required": ["answer", "n", "kind"],
    }
    body = _chat_body(
        "question",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Out", "schema": schema, "strict": True},
        },
    )
    obj = json.loads(build_answer(body))
    assert set(obj) == {"answer", "n", "kind"}
    assert obj["n"] == 10 and obj["kind"] == "x"


def test_plain_answer_without_markers_and_json_object_mode() -> None:
    assert build_answer(_chat_body("tell me a joke")).startswith("Answer ")
    obj = json.loads(build_answer(_chat_body("give json", response_format={"type": "json_object"})))
    assert isinstance(obj, dict) and obj


def test_responder_hook_overrides_content(srv: FakeLLMServer) -> None:
    srv.responder = lambda body: "PLANTED" if "plant" in body["messages"][-1]["content"] else None
    planted = json.loads(_post_chat(srv, _chat_body("please plant"))[2])
    normal = json.loads(_post_chat(srv, _chat_body("normal"))[2])
    assert planted["choices"][0]["message"]["content"] == "PLANTED"
    assert normal["choices"][0]["message"]["content"].startswith("Answer ")


def test_dspy_lm_end_to_end(srv: FakeLLMServer, dspy: ModuleType, qa_signature: type) -> None:
    lm = dspy.LM("openai/fake", api_base=srv.base_url, api_key="x", cache=False, num_retries=0)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        prediction = dspy.Predict(qa_signature)(question="What is the capital of France?")
    assert prediction.confidence == 4
    assert prediction.answer.startswith("Answer ")
    assert srv.request_count == 1
    assert srv.requests[0]["model"] == "fake"


# --------------------------------------------------------------------------- #
# Failure injection
# --------------------------------------------------------------------------- #


def test_429_with_retry_after(srv: FakeLLMServer) -> None:
    srv.retry_after = 2
    srv.script = ["429"]
    status, headers, raw = _post_chat(srv, _chat_body())
    assert status == 429
    assert headers.get("Retry-After") == "2"
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    assert _post_chat(srv, _chat_body())[0] == 200  # script consumed, back to normal
    assert srv.outcomes == ["429", "ok"]


def test_429_without_retry_after(srv: FakeLLMServer) -> None:
    srv.retry_after = None
    srv.enqueue("429")
    status, headers, _ = _post_chat(srv, _chat_body())
    assert status == 429
    assert "Retry-After" not in headers


@pytest.mark.parametrize("code", ["500", "502", "503"])
def test_server_errors(srv: FakeLLMServer, code: str) -> None:
    srv.script = [code]
    status, _, raw = _post_chat(srv, _chat_body())
    assert status == int(code)
    assert "error" in json.loads(raw)
    assert srv.request_count == 1


def test_malformed_body(srv: FakeLLMServer) -> None:
    srv.script = ["malformed"]
    status, _, raw = _post_chat(srv, _chat_body())
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


def test_length_truncation(srv: FakeLLMServer, dspy: ModuleType, qa_signature: type) -> None:
    messages = dspy.ChatAdapter().format(qa_signature, demos=[], inputs={"question": "Why?"})
    full = build_answer({"model": "fake", "messages": messages})
    srv.script = ["length"]
    status, _, raw = _post_chat(srv, {"model": "fake", "messages": messages})
    assert status == 200
    choice = json.loads(raw)["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "[[ ## completed ## ]]" not in choice["message"]["content"]
    assert len(choice["message"]["content"]) < len(full)


def test_reset_drops_connection(srv: FakeLLMServer) -> None:
    srv.script = ["reset"]
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        _post_chat(srv, _chat_body())
    assert srv.request_count == 1
    assert _post_chat(srv, _chat_body())[0] == 200  # server still healthy afterwards


def test_reset_seen_by_aiohttp_client(srv: FakeLLMServer) -> None:
    async def call() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{srv.base_url}/chat/completions", json=_chat_body()) as response,
        ):
            await response.read()

    srv.script = ["reset"]
    with pytest.raises(aiohttp.ClientError):
        asyncio.run(call())


def test_status_override(srv: FakeLLMServer) -> None:
    srv.status_override = 500
    assert _post_chat(srv, _chat_body())[0] == 500
    assert _get(f"{srv.url}/health")[0] == 500
    srv.status_override = None
    assert _post_chat(srv, _chat_body())[0] == 200
    assert srv.request_count == 2


def test_random_failures_are_reproducible() -> None:
    def run() -> list[str]:
        with FakeLLMServer(seed=7, fail_rate_500=0.3, fail_rate_429=0.3) as server:
            for _ in range(20):
                _post_chat(server, _chat_body())
            return server.outcomes

    first, second = run(), run()
    assert first == second
    assert {"ok", "500", "429"} <= set(first)


def test_invalid_script_entry_rejected() -> None:
    with pytest.raises(ValueError):
        FakeLLMServer(script=["teapot"])


# --------------------------------------------------------------------------- #
# Timing and concurrency
# --------------------------------------------------------------------------- #


def test_latency_respected(srv: FakeLLMServer) -> None:
    srv.latency = 0.2
    started = time.monotonic()
    assert _post_chat(srv, _chat_body())[0] == 200
    assert time.monotonic() - started >= 0.2


def test_latency_includes_building_the_answer(srv: FakeLLMServer) -> None:
    """The answer is built inside the latency, as a real server's work is: a responder that
    takes 0.3 s under a 0.4 s latency answers after about 0.4 s, not 0.7 s."""

    def slow(body: dict[str, Any]) -> str:
        time.sleep(0.3)
        return "built"

    srv.latency, srv.responder = 0.4, slow
    started = time.monotonic()
    status, _, raw = _post_chat(srv, _chat_body())
    elapsed = time.monotonic() - started
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "built"
    assert 0.4 <= elapsed < 0.6


def test_slow_script_entry(srv: FakeLLMServer) -> None:
    srv.script = ["slow:0.3"]
    started = time.monotonic()
    assert _post_chat(srv, _chat_body())[0] == 200
    assert time.monotonic() - started >= 0.3


def test_concurrent_requests_are_served_in_parallel(srv: FakeLLMServer) -> None:
    srv.latency = 0.2

    async def burst() -> list[int]:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> int:
                async with session.post(
                    f"{srv.base_url}/chat/completions", json=_chat_body(f"q{i}")
                ) as response:
                    await response.json()
                    return response.status

            return await asyncio.gather(*(one(i) for i in range(8)))

    assert asyncio.run(burst()) == [200] * 8
    assert srv.request_count == 8
    assert srv.max_concurrency > 1


def test_stop_is_clean_and_idempotent() -> None:
    server = FakeLLMServer(script=["slow:5"], shutdown_timeout=0.2).start()
    base_url = server.base_url
    thread = server._thread
    client = _background_request(base_url)
    assert server.wait_for_requests(1, timeout=5)
    started = time.monotonic()
    server.stop()
    server.stop()
    assert time.monotonic() - started < 4
    assert thread is not None and not thread.is_alive()
    client.wait(timeout=10)
    with pytest.raises((ConnectionError, urllib.error.URLError)):
        urllib.request.urlopen(f"{base_url}/models", timeout=2)


def _background_request(base_url: str) -> subprocess.Popen[bytes]:
    """Fire a request from another process so ``stop()`` has one in flight."""
    code = (
        "import json, urllib.request\n"
        f"req = urllib.request.Request({base_url + '/chat/completions'!r}, "
        "data=json.dumps({'model': 'fake', 'messages': []}).encode(), "
        "headers={'Content-Type': 'application/json'})\n"
        "try:\n    urllib.request.urlopen(req, timeout=10)\nexcept Exception:\n    pass\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def test_cli_prints_base_url_and_stops_on_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, str(FAKE_LLM_SCRIPT), "--port", "0", "--latency", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            base_url = process.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
                assert response.status == 200
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
            assert process.returncode == 0
            assert "fake-llm stopped" in stderr
        finally:
            if process.poll() is None:
                process.kill()
