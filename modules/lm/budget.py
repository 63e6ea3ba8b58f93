"""A cap on the LM calls, tokens or cost one run (or one optimization) may spend.

It sits between our cache and the real engine, so only calls that reach a model are charged:
cache hits are free. Once the cap is reached no new call is dispatched: each raises
BudgetExhausted, which the caller turns into "stopped, everything finished is kept".
"""

from __future__ import annotations

import threading
from typing import Any

BUDGET_SPENT = "budget of"  # in every refusal's message: how a caught error is recognised


class BudgetExhausted(RuntimeError):
    """No new LM call may be made: the run's budget is spent."""


class CallBudget:
    """A plain class, not a dataclass: orchestrators that rebuild dataclass parameters would
    hand each task its own counter, and the cap must be one counter for the whole run."""

    def __init__(
        self,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
    ) -> None:
        self.max_calls, self.max_tokens, self.max_cost_usd = max_calls, max_tokens, max_cost_usd
        self.calls = 0
        self.tokens = 0
        self.cost_usd = 0.0
        self.refused = 0  # calls turned away: the work that needed them is unfinished
        self._lock = threading.Lock()

    def reason(self) -> str | None:
        """Why no new call may start, or None while there is budget left."""
        if self.max_calls is not None and self.calls >= self.max_calls:
            return f"the budget of {self.max_calls} LM calls is spent"
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"the budget of {self.max_tokens} tokens is spent"
        if self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd:
            return f"the budget of ${self.max_cost_usd} is spent"
        return None

    def reserve(self) -> None:
        """Claim one call before dispatching it, so concurrent callers never overshoot."""
        with self._lock:
            why = self.reason()
            if why is not None:
                self.refused += 1
                raise BudgetExhausted(why)
            self.calls += 1

    def settle(self, tokens: int, cost_usd: float = 0.0) -> None:
        with self._lock:
            self.tokens += tokens
            self.cost_usd += cost_usd

    @property
    def exhausted(self) -> bool:
        return self.reason() is not None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (for task runners that ship it); a copy counts on its own from there."""
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class BudgetEngine:
    """Charges each real call to the budget; refuses once it is spent."""

    def __init__(self, inner: Any, budget: CallBudget, price_in: float = 0.0,
                 price_out: float = 0.0) -> None:  # fmt: skip
        self.inner = inner
        self.budget = budget
        self.price_in = price_in
        self.price_out = price_out

    def _settle(self, response: Any) -> None:
        usage = getattr(response, "usage", None)
        tin = int(getattr(usage, "input_tokens", 0) or 0)
        tout = int(getattr(usage, "output_tokens", 0) or 0)
        self.budget.settle(tin + tout, (tin * self.price_in + tout * self.price_out) / 1e6)

    def complete(self, request: Any) -> Any:
        self.budget.reserve()
        response = self.inner.complete(request)
        self._settle(response)
        return response

    def stream(self, request: Any) -> Any:
        return self.inner.stream(request)

    def close(self) -> None:
        self.inner.close()


class AsyncBudgetEngine(BudgetEngine):
    async def complete(self, request: Any) -> Any:  # type: ignore[override]
        self.budget.reserve()
        response = await self.inner.complete(request)
        self._settle(response)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
