"""A per-role cap on calls in flight: one server behind a role may take less than the run's
concurrency (a small GPU, a rate-limited API), while another role's server takes more.

It wraps the real engine (behind the cache, so cache hits never wait). The async side keeps
one asyncio.Semaphore per event loop: simulation may run on a fresh loop per shard.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any


class CallLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.threads = threading.BoundedSemaphore(limit)
        self._loops: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def for_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        with self._lock:
            sem = self._loops.get(loop)
            if sem is None:
                sem = self._loops[loop] = asyncio.Semaphore(self.limit)
            return sem


class LimitEngine:
    def __init__(self, inner: Any, limit: CallLimit) -> None:
        self.inner = inner
        self.limit = limit

    def complete(self, request: Any) -> Any:
        with self.limit.threads:
            return self.inner.complete(request)

    def stream(self, request: Any) -> Any:
        return self.inner.stream(request)

    def close(self) -> None:
        self.inner.close()


class AsyncLimitEngine(LimitEngine):
    async def complete(self, request: Any) -> Any:  # type: ignore[override]
        async with self.limit.for_loop():
            return await self.inner.complete(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
