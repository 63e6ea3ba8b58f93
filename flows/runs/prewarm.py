"""The publish stage's imports, made on a daemon thread while the simulation waits on the
network, so publishing finds them loaded (benchmarks/decisions.md, cold start).

A runtime choice of the simulate stage, not an import side effect: `master run`'s simulation
calls `prewarm()` once its first dialogues have made their first calls
(flows/runs/stages.py:simulate_stage), the augment flow when it submits its shards; a replay
never does. It cannot change a run's outcome: an import that fails here is logged at DEBUG
and left to publish, which imports the module again where it uses it (and reports the error
there); a module still being imported when publish needs it makes publish wait under
Python's per-module import lock, as any second importer does. The thread only imports, so it
ends on its own and a run that fails meanwhile is unaffected.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Sequence

log = logging.getLogger("master")

#: What publish imports that nothing before it has loaded: the dataset writers (pyarrow's
#: parquet writer, the card's huggingface_hub), pandas, which pyarrow imports at its first
#: conversion of Python rows (writers.dataset_schema), and the parts of matplotlib the plots
#: draw with (flows/publish/plots.py).
PUBLISH_IMPORTS = (
    "flows.publish.writers",
    "pandas",
    "pyarrow.pandas_compat",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "matplotlib.ticker",
)


def prewarm(modules: Sequence[str] | None = None) -> threading.Thread | None:
    """Start importing `modules` (PUBLISH_IMPORTS by default) on a daemon thread; return the
    thread (nobody needs to join it), or None if no thread could be started (logged: publish
    imports them itself)."""
    names = tuple(PUBLISH_IMPORTS if modules is None else modules)
    thread = threading.Thread(target=import_all, args=(names,), name="master-prewarm", daemon=True)
    try:
        thread.start()
    except RuntimeError as exc:  # "can't start new thread": the run goes on without it
        log.debug("prewarm: no thread: %s", exc)
        return None
    return thread


def import_all(modules: Sequence[str]) -> None:
    """Import each module in turn; one that fails is logged and skipped."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - publish imports it again and says why
            log.debug("prewarm: %s not imported: %s: %s", name, type(exc).__name__, exc)
