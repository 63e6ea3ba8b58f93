"""Role -> dspy.LM: the one place where settings become live models.

Each role gets a ``dspy.LM`` whose engine is our ``CachingEngine`` in front of the real one:
our own engine for OpenAI-compatible endpoints (``openai/...`` and ``hosted_vllm/...`` model
ids; modules/lm/openai_compat.py, which also owns the retries), DSPy's LiteLLM engine for any other
provider prefix, or the embedded SmolLM2. DSPy's own response cache is off (``cache=False``) so
it never shadows ours; DSPy keeps what it is good at (adapters, history).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dspy
from dspy.clients.engines import AsyncLiteLLMEngine, LiteLLMEngine

from modules.lm.budget import AsyncBudgetEngine, BudgetEngine, CallBudget
from modules.lm.call_cache import AsyncCachingEngine, CachingEngine, CallStore
from modules.lm.embedded import AsyncEmbeddedEngine, EmbeddedEngine
from modules.lm.limits import AsyncLimitEngine, CallLimit, LimitEngine
from modules.lm.openai_compat import (
    OPENAI_BASE,
    AsyncOpenAICompatEngine,
    OpenAICompatEngine,
    serves,
)
from modules.lm.pool import Pool
from modules.lm.settings import LMConfigError, LMSettings, Role, RoleLMs


class RoleLM(dspy.LM):
    """A role's dspy.LM. A copy of a program shares its LMs: an LM is a client (engines, the
    call cache, the budget, DSPy's engine lock), not program state, so deepcopy returns the
    same LM. DSPy's optimizers copy programs; without this, each copy fell back to a shallow
    copy of the LM with a warning per predictor."""

    #: the role's replica pool (modules/lm/pool.py) when an OpenAI-compatible engine serves it
    pool: Pool | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> RoleLM:
        return self


def _remote_engines(
    role: Role, settings: LMSettings, num_retries: int
) -> tuple[object, object, int]:
    """The sync and async engines, and the retries left to DSPy (0 when the engine retries)."""
    if settings.api_key_env and not os.environ.get(settings.api_key_env):
        raise LMConfigError(
            f"role {role}: environment variable {settings.api_key_env} is not set "
            f"(it must hold the API key for {settings.model})"
        )
    if serves(settings.model):
        # one pool for the role's sync and async engines; it caps each replica at
        # max_concurrency itself (AIMD below that), so no LimitEngine goes around them
        pool = Pool(settings.replicas or [OPENAI_BASE], settings.max_concurrency, name=role)
        policy = (settings.api_base, settings.api_key_env, settings.timeout_s, num_retries)
        extra = {"structured_output": settings.structured_output, "pool": pool}
        return (
            OpenAICompatEngine(*policy, **extra),
            AsyncOpenAICompatEngine(*policy, **extra),
            0,
        )
    if len(settings.replicas) > 1:
        raise LMConfigError(
            f"role {role}: api_base lists {len(settings.replicas)} replicas, which only "
            f"openai/... and hosted_vllm/... models can use (the model is {settings.model})"
        )
    options: dict[str, object] = {"timeout": settings.timeout_s}
    if settings.api_base:
        options["api_base"] = settings.replicas[0]
    if settings.api_key_env:
        options["api_key"] = os.environ[settings.api_key_env]
    elif settings.api_base:
        options["api_key"] = "not-needed"  # local servers ignore it; LiteLLM insists on one
    return LiteLLMEngine(**options), AsyncLiteLLMEngine(**options), num_retries


def build_lm(
    role: Role,
    settings: LMSettings,
    store: CallStore | None,
    num_retries: int = 3,
    budget: CallBudget | None = None,
) -> dspy.LM:
    pool = None
    if settings.is_embedded:
        inner = EmbeddedEngine()
        ainner: object = AsyncEmbeddedEngine(inner)
    else:
        inner, ainner, num_retries = _remote_engines(role, settings, num_retries)  # type: ignore[assignment]
        pool = getattr(inner, "pool", None)
    if settings.max_concurrency and pool is None:  # behind the cache: hits never wait
        limit = CallLimit(settings.max_concurrency)
        inner, ainner = LimitEngine(inner, limit), AsyncLimitEngine(ainner, limit)  # type: ignore[assignment]
    if budget is not None:  # behind the cache: only calls that reach a model are charged
        prices = (settings.price_in_per_mtok or 0.0, settings.price_out_per_mtok or 0.0)
        inner = BudgetEngine(inner, budget, *prices)  # type: ignore[assignment]
        ainner = AsyncBudgetEngine(ainner, budget, *prices)
    sync = CachingEngine(inner, role, store)
    lm = RoleLM(
        settings.model,
        engine=sync,
        async_engine=AsyncCachingEngine(ainner, sync),
        cache=False,
        num_retries=num_retries,
        temperature=settings.temperature,
        max_tokens=settings.max_tokens,
    )
    lm.pool = pool
    return lm


def build_role_lms(
    lms: RoleLMs,
    store: CallStore | None,
    roles: tuple[Role, ...] | None = None,
    budget: CallBudget | None = None,
) -> Mapping[Role, dspy.LM]:
    """Build the LMs of the given roles (all four by default), sharing one budget if given."""
    wanted = roles or tuple(role for role, _ in lms.items())
    return {role: build_lm(role, lms.for_role(role), store, budget=budget) for role in wanted}
