"""Process set-up, in one explicit call: importing any package of this project does nothing
but define things.

``setup()`` is called by the CLI, the Prefect flows, the benchmarks and the test fixtures
before any work. It sets, once per process:

- environment defaults the LM stack reads when it is first imported (``setdefault``: a
  value the user exported wins): LiteLLM's bundled cost map instead of a download, no
  telemetry, no tokenizer thread pools forked behind our back. The Hugging Face hubs are left
  as the user set them (the bundled models load from their installed files, and a Hub upload
  or a `hf:` seed source needs the network);
- glibc's heap trim threshold (``keep_heap_top``);
- each repeated DSPy warning shown once per process;
- DSPy's speed patches (modules/lm/dspy_internals.py). ``setup(dspy=False)`` leaves them,
  and the import of DSPy, to a later ``setup()``: `master run` calls it once the run cache
  missed, so a replayed run never loads DSPy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

ENV_DEFAULTS = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}

#: DSPy loggers whose warnings repeat per call: a truncated reply (the turn guards flag each
#: one and summary.json counts them), MIPROv2's proposer passing extra inputs, a reply an
#: adapter retries. Each distinct warning is shown once per process.
REPEATING_LOGGERS = (
    "dspy.clients.lm",
    "dspy.predict.predict",
    "dspy.adapters.chat_adapter",
    "dspy.adapters.json_adapter",
)

M_TRIM_THRESHOLD = -1
#: Heap kept in the process instead of returned to the kernel at each free. diskcache
#: compresses every key and value with zlib, which allocates and frees its deflate state per
#: call; under glibc's default threshold (128 KB) each free shrinks the heap and the next call
#: faults the pages in again (benchmarks/RESULTS.md).
TRIM_THRESHOLD = 32 * 1024 * 1024

_done = False
_dspy_done = False


def setup(dspy: bool = True) -> None:
    """Everything a process needs before it works with this project (idempotent); with
    dspy=False all but DSPy's patches (see the module docstring)."""
    global _done, _dspy_done
    if not _done:
        _done = True
        for name, value in ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        keep_heap_top()
        show_repeated_warnings_once()
    if dspy and not _dspy_done:
        _dspy_done = True
        from modules.lm import dspy_internals

        dspy_internals.install()


class ShowOnce(logging.Filter):
    """Lets each distinct message template through once (the first record of each)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def show_repeated_warnings_once() -> None:
    for name in REPEATING_LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, ShowOnce) for f in log.filters):
            log.addFilter(ShowOnce())


_heap_done = False


def keep_heap_top(threshold: int = TRIM_THRESHOLD) -> bool:
    """Raise glibc's trim threshold once per process; True if it was set now. glibc only;
    elsewhere, or if the call fails, nothing changes. ``MALLOC_TRIM_THRESHOLD_`` in the
    environment (glibc's own tunable) wins."""
    global _heap_done
    if _heap_done or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    _heap_done = True
    try:
        if platform.system() != "Linux" or not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_TRIM_THRESHOLD, threshold))
    except (OSError, AttributeError, ValueError):
        return False
