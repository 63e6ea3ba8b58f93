"""Our engine for OpenAI-compatible endpoints, checked on the wire against the fake server."""

from __future__ import annotations

import asyncio
import time

import pytest
from dspy.lm15 import (
    Config,
    InvalidRequestError,
    Message,
    RateLimitError,
    Request,
    ServerError,
    TransportError,
)
from dspy.lm15 import TimeoutError as LMTimeoutError

from conftest import role_lms
from fake_llm import FakeLLMServer
from modules.lm.call_cache import CallStore, ledger
from modules.lm.factory import build_lm, build_role_lms
from modules.lm.openai_compat import AsyncOpenAICompatEngine, OpenAICompatEngine, serves, wire_model
from modules.lm.settings import LMSettings, RoleLMs


def _request(model: str = "openai/weak-model", max_tokens: int = 77) -> Request:
    return Request(
        model=model,
        messages=(Message.user("What is 2 + 2?"),),
        system="Answer briefly.",
        config=Config(max_tokens=max_tokens, temperature=0.3),
    )


def _engine(server: FakeLLMServer, **policy: float) -> OpenAICompatEngine:
    return OpenAICompatEngine(
        server.base_url,
        None,
        policy.pop("timeout_s", 10.0),
        int(policy.pop("max_retries", 3)),
        **policy,
    )


def test_model_prefixes() -> None:
    assert serves("openai/gpt-4o-mini") and serves("hosted_vllm/Qwen/Qwen2.5-7B")
    assert not serves("anthropic/claude") and not serves("gpt-4o") and not serves("openai/")
    assert wire_model("hosted_vllm/Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"


def test_max_tokens_is_sent_as_max_tokens_with_the_bare_model_id(
    fake_llm: FakeLLMServer,
) -> None:
    response = _engine(fake_llm).complete(_request())
    (body,) = fake_llm.requests
    assert body["max_tokens"] == 77 and "max_completion_tokens" not in body
    assert body["model"] == "weak-model" and body["temperature"] == 0.3
    assert body["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert response.text and response.finish_reason == "stop"
    assert response.usage.input_tokens and response.usage.output_tokens


def test_the_async_engine_sends_the_same_body(fake_llm: FakeLLMServer) -> None:
    async def call() -> None:
        engine = AsyncOpenAICompatEngine(fake_llm.base_url, None, 10.0)
        try:
            await engine.complete(_request())
        finally:
            await engine.aclose()

    _engine(fake_llm).complete(_request())
    asyncio.run(call())
    sync_body, async_body = fake_llm.requests
    assert sync_body == async_body


def test_a_429_is_retried_after_the_servers_retry_after() -> None:
    # The backoff (5 s) is far longer than Retry-After: the test is quick only if it is honoured.
    with FakeLLMServer(script=["429", "ok"], retry_after=0.4) as server:
        start = time.monotonic()
        response = _engine(server, backoff_s=5.0).complete(_request())
        elapsed = time.monotonic() - start
        assert server.request_count == 2 and server.outcomes == ["429", "ok"]
    assert response.text
    assert 0.4 <= elapsed < 3.0


def test_the_async_engine_honours_retry_after_too() -> None:
    async def call(server: FakeLLMServer) -> float:
        engine = AsyncOpenAICompatEngine(server.base_url, None, 10.0, 3, backoff_s=5.0)
        start = time.monotonic()
        try:
            await engine.complete(_request())
        finally:
            await engine.aclose()
        return time.monotonic() - start

    with FakeLLMServer(script=["429", "ok"], retry_after=0.4) as server:
        elapsed = asyncio.run(call(server))
        assert server.request_count == 2
    assert 0.4 <= elapsed < 3.0


@pytest.mark.parametrize("status", ["500", "502", "503", "504"])
def test_a_server_error_then_success(status: str) -> None:
    with FakeLLMServer(script=[status, "ok"]) as server:
        response = _engine(server, backoff_s=0.01).complete(_request())
        assert server.request_count == 2
    assert response.text


def test_retries_give_up_with_a_canonical_error() -> None:
    with FakeLLMServer(status_override=429) as server:
        with pytest.raises(RateLimitError) as info:
            _engine(server, max_retries=2, backoff_s=0.01).complete(_request())
        assert server.request_count == 3
    assert info.value.status == 429
    with FakeLLMServer(status_override=500) as server:
        with pytest.raises(ServerError):
            _engine(server, max_retries=1, backoff_s=0.01).complete(_request())
        assert server.request_count == 2


def test_a_client_error_is_not_retried() -> None:
    with FakeLLMServer(script=["400"]) as server:
        with pytest.raises(InvalidRequestError):
            _engine(server, backoff_s=0.01).complete(_request())
        assert server.request_count == 1


def test_a_call_that_outlives_its_timeout_fails_then_a_retry_succeeds() -> None:
    with FakeLLMServer(script=["slow:3", "slow:3"]) as server:
        start = time.monotonic()
        with pytest.raises(LMTimeoutError):
            _engine(server, timeout_s=0.3, max_retries=0).complete(_request())
        assert time.monotonic() - start < 2.0
        response = _engine(server, timeout_s=0.3, backoff_s=0.01).complete(_request())
        assert response.text and server.request_count == 3  # the slow one, then a quick answer


def test_the_async_timeout() -> None:
    async def call(server: FakeLLMServer) -> None:
        engine = AsyncOpenAICompatEngine(server.base_url, None, 0.3, 0)
        try:
            await engine.complete(_request())
        finally:
            await engine.aclose()

    with FakeLLMServer(script=["slow:3"]) as server:
        start = time.monotonic()
        with pytest.raises(LMTimeoutError):
            asyncio.run(call(server))
        assert time.monotonic() - start < 2.0


def test_connection_errors_are_retried_then_reported() -> None:
    engine = OpenAICompatEngine("http://127.0.0.1:9/v1", None, 5.0, 2, backoff_s=0.01)
    with pytest.raises(TransportError):
        engine.complete(_request())
    with FakeLLMServer(script=["reset", "ok"]) as server:
        assert _engine(server, backoff_s=0.01).complete(_request()).text
        assert server.request_count == 2


def test_the_key_is_read_from_its_variable_at_call_time_and_never_kept(
    fake_llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    canary = "sk-canary-http-engine-31415"
    monkeypatch.setenv("MASTER_TEST_KEY", canary)
    engine = OpenAICompatEngine(fake_llm.base_url, "MASTER_TEST_KEY", 10.0)
    assert engine.headers()["Authorization"] == f"Bearer {canary}"
    assert canary not in repr(engine) and canary not in repr(vars(engine))
    engine.complete(_request())
    assert canary not in repr(vars(engine))
    monkeypatch.setenv("MASTER_TEST_KEY", "sk-rotated")
    assert engine.headers()["Authorization"] == "Bearer sk-rotated"


def test_usage_and_finish_reason_reach_the_ledger(fake_llm: FakeLLMServer, tmp_path) -> None:
    settings = LMSettings.model_validate(role_lms(fake_llm.base_url)["weak"])
    lm = build_lm("weak", settings, CallStore(tmp_path / "cache"))
    fake_llm.script = ["length"]
    with ledger() as book:
        lm("Say something long.")
        lm("Say something short.")
    first, second = book.records
    assert first.finish_reason == "length" and second.finish_reason == "stop"
    assert all(r.tokens_in > 0 and r.tokens_out > 0 and not r.cached for r in book.records)
    assert fake_llm.requests[0]["max_tokens"] == 256


def test_sync_and_async_calls_share_one_cache_key(fake_llm: FakeLLMServer, tmp_path) -> None:
    """The key comes from the DSPy Request, before the engine: either path hits the other's."""
    lms = build_role_lms(
        RoleLMs.model_validate(role_lms(fake_llm.base_url)), CallStore(tmp_path / "c")
    )
    with ledger() as book:
        lms["strong"]("Cache me.")
        asyncio.run(lms["strong"].acall("Cache me."))
    assert [r.cached for r in book.records] == [False, True]
    assert book.records[0].key == book.records[1].key
    assert fake_llm.request_count == 1


def test_an_openai_quota_failure_is_not_retried() -> None:
    from modules.lm.openai_compat import _http_error, _retryable

    quota = b'{"error": {"code": "insufficient_quota", "message": "You exceeded your quota"}}'
    error = _http_error(429, quota, None)
    assert not _retryable(error) and error.status == 429
    assert _retryable(_http_error(429, b'{"error": {"code": "rate_limit_exceeded"}}', 1.0))


def test_the_body_is_dspys_own_conversion() -> None:
    """The engine keeps one conversion dialect instead of DSPy building one per call: the
    body must still be what DSPy's request_kwargs gives, but for the model id and max_tokens."""
    import json

    from dspy.clients.lm15_boundary import request_kwargs

    engine = OpenAICompatEngine(None, None, 10.0)
    requests = [
        _request(),
        Request(
            model="hosted_vllm/strong",
            messages=(
                Message.user("Question?"),
                Message.assistant("An answer."),
                Message.user("Again, shorter: ünïcode"),
            ),
            system="You are a teacher.",
            config=Config(max_tokens=256, temperature=0.0, stop=("\n\n",), seed=7, top_p=0.9),
        ),
        Request(model="openai/weak", messages=(Message.user("No system, no config."),)),
    ]
    for request in requests:
        expected = request_kwargs(request, "chat")
        if "max_completion_tokens" in expected:
            expected["max_tokens"] = expected.pop("max_completion_tokens")
        expected["model"] = wire_model(request.model)
        assert json.loads(engine.body(request)) == expected


def test_requests_cannot_carry_what_orjson_writes_differently() -> None:
    """The engine writes bodies with orjson, which writes NaN as null where json.dumps wrote
    NaN: that is the same body only because DSPy's Request refuses NaN and non-JSON values
    before any engine sees them."""
    with pytest.raises(ValueError):
        Config(temperature=float("nan"))
    with pytest.raises(TypeError):
        Config(max_tokens=8, extensions={"repetition_penalty": float("nan")})


def test_a_call_fails_over_to_another_replica_without_spending_a_retry() -> None:
    with FakeLLMServer(status_override=503) as sick, FakeLLMServer() as well:
        dead = "http://127.0.0.1:9/v1"
        sync = OpenAICompatEngine([dead, sick.base_url, well.base_url], None, 5.0, 0)
        for _ in range(3):  # no retries left to spend: only failover can answer
            assert sync.complete(_request()).text
        aengine = AsyncOpenAICompatEngine([sick.base_url, well.base_url], None, 5.0, 0)

        async def calls() -> list[str]:
            return [(await aengine.complete(_request())).text for _ in range(3)]

        assert all(asyncio.run(calls()))
        assert well.request_count == 6
        stats = sync.pool.stats()
    assert stats[dead].ejections == 1 and stats[dead].calls == 1  # out at once, stays out
    assert stats[sick.base_url.rstrip("/")].failures >= 1


def test_a_429_moves_the_call_to_another_replica_and_cuts_only_the_busy_ones_limit() -> None:
    with FakeLLMServer(script=["429"], retry_after=30) as busy, FakeLLMServer() as free:
        engine = OpenAICompatEngine([busy.base_url, free.base_url], None, 5.0, 0,
                                    max_concurrency=8)  # fmt: skip
        busy_replica, free_replica = engine.pool.replicas
        busy_replica.in_flight = free_replica.in_flight = 3  # others' calls; a tie: busy first
        assert engine.complete(_request()).text  # no retry left: only failover can answer
    assert busy.outcomes == ["429"] and free.request_count == 1
    assert busy_replica.limit == 2  # half of the 4 in flight when it said 429
    assert free_replica.limit == 8 and not busy_replica.down
    assert free_replica.in_flight == 3 and busy_replica.in_flight == 3  # its slots given back
