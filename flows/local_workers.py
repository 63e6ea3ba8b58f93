"""Simulation over forked worker processes on this machine (`run.workers`).

One event loop drives every dialogue of a shard, and under the GIL it is one core's worth of
Python: DSPy's adapters, the HTTP client and the cache writes. A fast endpoint (a local vLLM,
a batch API) is then waiting on that core, not the other way round. `run.workers: N` splits
the jobs into N interleaved shards, each in its own forked process with its own loop,
programs and cache handles (SQLite is safe across processes), and
`run.concurrency / N` dialogues in flight, so the endpoint sees the same load. Each child
returns what its shard function returns (flows/run.py: its Collected, with rows spilled to a
file of its own); publishing orders rows and rejects by content, so the outputs are the same
as with one process.

Processes are forked (not spawned): the children start at once with everything the parent
imported and planned, and nothing is pickled on the way in. A child stops when its parent
dies (it would otherwise go on spending calls nobody collects), and Ctrl-C in the parent
interrupts every child, which keeps what it finished, as a single process does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from flows.config import MasterConfig
from flows.jobs import Job
from flows.simulate import STOP
from modules.budget import CallBudget

log = logging.getLogger("master")

T = TypeVar("T")
Shard = Callable[[list[Job], MasterConfig, CallBudget | None, Future[list[Job]] | None], T]


def worker_count(cfg: MasterConfig, jobs: int, embedded: bool) -> int:
    """The processes worth starting: none beyond the jobs, and one for an embedded model
    (each process would load its own copy of the weights)."""
    if embedded or os.name != "posix":
        return 1
    return max(1, min(cfg.run.workers, jobs))


def shard_config(cfg: MasterConfig, workers: int) -> MasterConfig:
    """A child's config: its share of run.concurrency (nothing in a dataset depends on it)."""
    concurrency = max(1, -(-cfg.run.concurrency // workers))
    return cfg.model_copy(update={"run": cfg.run.model_copy(update={"concurrency": concurrency})})


def run_forked(
    shard: Shard[T],
    jobs: list[Job],
    cfg: MasterConfig,
    budgets: list[CallBudget | None],
    later: Callable[[], list[Job]] | None = None,
) -> list[T]:
    """`shard` over len(budgets) forked processes, on interleaved parts of the jobs (so
    each gets its share of every scenario); the children's results, in child order.

    `later` plans more jobs here while the children already run: each gets its
    interleaved part of them through a pipe (the parent is otherwise idle until the end)."""
    workers = len(budgets)
    child_cfg = shard_config(cfg, workers)
    context = multiprocessing.get_context("fork")
    children: list[tuple[Any, Connection]] = []
    feeds: list[Connection] = []
    for index, budget in enumerate(budgets):
        receive, send = context.Pipe(duplex=False)
        feed_out, feed_in = context.Pipe(duplex=False) if later is not None else (None, None)
        process = context.Process(
            target=_child,
            args=(shard, jobs[index::workers], child_cfg, budget, send, os.getpid(), feed_out),
            name=f"master-worker-{index}",
        )
        process.start()
        send.close()
        if feed_out is not None and feed_in is not None:
            feed_out.close()
            feeds.append(feed_in)
        children.append((process, receive))
    log.info("simulating over %d worker processes", workers)
    try:
        if later is not None:
            planned = later()
            for index, feed in enumerate(feeds):
                feed.send(("ok", planned[index::workers]))
                feed.close()
        results = [_result(process, receive) for process, receive in children]
    except BaseException:
        for process, _ in children:  # Ctrl-C or a failed child: every child keeps what it has
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGINT)
        raise
    finally:
        for feed in feeds:
            feed.close()  # a child still waiting for later jobs gets EOF: it stops
        for process, receive in children:
            receive.close()  # a child still sending gets a broken pipe instead of hanging
            process.join()
    return results


def in_forked_process(work: Callable[[], T], name: str) -> Future[T]:
    """work() in a forked process of its own; its result, or its failure, in the future.

    For CPU work beside the one process's simulation (the analogy retrieval): a thread
    would hold the GIL the event loop needs, a process runs on the other core. Daemonic, it
    never outlives this process's normal exit, and it ends within 0.2 s of this process
    being killed: its work is then of no use, and it holds what it inherited (the output
    folder's flock, which would refuse the rerun)."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(
        target=_work_child, args=(work, send, os.getpid()), name=name, daemon=True
    )
    process.start()
    send.close()
    return _arriving(
        receive,
        f"{name}-result",
        lambda: f"{name} ended without a result (exit code {process.exitcode})",
        process.join,  # before the result: nothing is left running once it is known
    )


def _arriving(
    receive: Connection,
    name: str,
    gone: Callable[[], str],
    then: Callable[[], object] | None = None,
) -> Future[Any]:
    """The ("ok", value) or ("error", exception) message a pipe will bring, read on a thread
    of its own (the caller's loop goes on meanwhile); `gone()` words the failure if the pipe
    closes without one. `then` runs once the pipe is done, before the future is set."""
    future: Future[Any] = Future()

    def wait() -> None:
        try:
            status, value = receive.recv()
        except EOFError:
            status, value = "gone", None
        except BaseException as exc:  # noqa: BLE001 - a message that does not unpickle
            status, value = "error", exc
        finally:
            receive.close()
            if then is not None:
                then()
        if status == "gone":  # worded after `then`: a joined process has its exit code
            status, value = "error", RuntimeError(gone())
        (future.set_result if status == "ok" else future.set_exception)(value)

    threading.Thread(target=wait, name=name, daemon=True).start()
    return future


def forking_is_safe() -> bool:
    """Whether a forked child may do anything this process can: not where fork is missing,
    nor once torch is loaded (its thread pools do not survive a fork; the child would embed
    with them)."""
    return os.name == "posix" and "torch" not in sys.modules


def _work_child(work: Callable[[], Any], send: Connection, parent: int) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    try:
        _send(send, ("ok", work()))
    except BaseException as exc:  # noqa: BLE001 - raised in the parent
        _send(send, ("error", exc))
    finally:
        send.close()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def _send(send: Connection, message: tuple[str, Any]) -> None:
    try:
        send.send(message)
    except Exception:  # noqa: BLE001 - something that does not pickle
        if message[0] == "ok":
            raise
        send.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]}")))


def _result(process: Any, receive: Connection) -> Any:
    # Polled, not one blocking read: Ctrl-C may be delivered to another thread of this
    # process (torch's, after the embedder ran), and then only the main thread running
    # Python again raises KeyboardInterrupt here.
    while not receive.poll(0.2):
        pass
    try:
        status, value = receive.recv()
    except EOFError:
        raise RuntimeError(
            f"simulation worker {process.name} ended without a result "
            f"(exit code {process.exitcode}); its finished calls are in the cache"
        ) from None
    if status == "error":
        raise value
    return value


def _child(
    shard: Shard[Any],
    jobs: list[Job],
    cfg: MasterConfig,
    budget: CallBudget | None,
    send: Connection,
    parent: int,
    feed: Connection | None,
) -> None:
    signal.signal(signal.SIGINT, _interrupt_once)
    threading.Thread(target=_stop_when_orphaned, args=(parent,), daemon=True).start()
    try:
        later = None
        if feed is not None:  # EOF: the parent failed to plan them (it reports why) or is gone
            later = _arriving(feed, "receive-later-jobs", lambda: "the parent sent no analogy jobs")
        send.send(("ok", shard(jobs, cfg, budget, later)))
    except BaseException as exc:  # noqa: BLE001 - re-raised in the parent
        _send(send, ("error", exc))
    finally:
        send.close()


def _interrupt_once(signum: int, frame: Any) -> None:
    """Ctrl-C reaches a child twice (from the terminal and from the parent): the second must
    not interrupt the first one's cleanup, which commits the finished calls."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _stop_when_orphaned(parent: int) -> None:
    """Cancel the in-flight dialogues once the parent is gone (killed with -9)."""
    while not STOP.wait(0.5):
        if os.getppid() != parent:
            STOP.set()
