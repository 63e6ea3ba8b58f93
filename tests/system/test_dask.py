"""Scale-out: the augment flow with `run.task_runner: dask` on a real Dask cluster on loopback.

A `dask scheduler` and two `dask worker` processes (one thread each) run as subprocesses, each in
its own working directory, so the shards really travel to other processes and the LM cache
is shared through the folder alone: a second run makes no new request and writes the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from conftest import hashing_embedder, log_tail, role_lms, stop_group
from fake_llm import FakeLLMServer

DASK = str(Path(sys.executable).with_name("dask"))
START_TIMEOUT = 120


def _start(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """A child in its own process group (Dask's nanny forks the worker), output to a file."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )


@pytest.fixture
def dask_cluster(tmp_path: Path) -> Iterator[str]:
    """A scheduler and two single-thread workers on 127.0.0.1; yields the scheduler address."""
    from distributed import Client

    logs = tmp_path / "dask-logs"
    logs.mkdir()
    scheduler_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            _start(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
                + ["--scheduler-file", str(scheduler_file)],
                logs / "scheduler.log",
                tmp_path,
            )
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            assert procs[0].poll() is None, f"scheduler exited:\n{log_tail(logs / 'scheduler.log')}"
            assert time.monotonic() < deadline, (
                f"no scheduler file after {START_TIMEOUT}s:\n{log_tail(logs / 'scheduler.log')}"
            )
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written whole, but give a partial write a moment
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):
            cwd = tmp_path / f"worker{i}"  # not the project: relative paths would not resolve
            cwd.mkdir()
            procs.append(
                _start(
                    [DASK, "worker", "--scheduler-file", str(scheduler_file)]
                    + ["--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1"]
                    + ["--no-dashboard", "--local-directory", str(cwd), "--name", f"w{i}"],
                    logs / f"worker{i}.log",
                    cwd,
                )
            )
        with Client(address, timeout=60) as client:
            try:
                client.wait_for_workers(2, timeout=START_TIMEOUT)
            except TimeoutError:
                pytest.fail(
                    "two Dask workers did not join in time:\n"
                    + "\n".join(log_tail(logs / f"worker{i}.log") for i in range(2))
                )
        yield address
    finally:
        for proc in reversed(procs):
            stop_group(proc)


def test_augment_flow_on_a_dask_cluster(
    dask_cluster: str,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distributed import Client, get_task_stream

    import flows.planning.minilm
    from flows.augment import augment

    # planning (retrieval) runs in the flow's own process: the cheap embedder stands in there
    monkeypatch.setattr(flows.planning.minilm, "minilm_embedder", lambda: hashing_embedder)
    config = write_config(
        role_lms(fake_llm.base_url),
        sample=6,
        run={"shard_size": 2, "task_runner": "dask", "dask_address": dask_cluster},
        # the rerun must reach the workers' dialogue cache, not replay the stored run
        cache={"dir": str(tmp_path / "cache"), "replay_runs": False},
    )
    first, second = tmp_path / "first", tmp_path / "second"
    with prefect_test_harness(server_startup_timeout=120), Client(dask_cluster) as client:
        with get_task_stream(client) as stream:
            summary = augment(config_path=str(config), out=str(first))
        calls = fake_llm.request_count
        assert summary["lm"]["calls"] == calls > 0
        assert sum(summary["dialogues"].values()) == 6
        # each worker's replica counts come back with its shard
        by_role = summary["lm"]["by_role"].values()
        assert (
            sum(r["replicas"][fake_llm.base_url]["calls"] for r in by_role if "replicas" in r)
            == calls
        )
        for name in ("summary.json", "dataset.parquet", "dataset.jsonl", "report.md"):
            assert (first / name).is_file(), f"{name} missing in {sorted(os.listdir(first))}"
        assert json.loads((first / "summary.json").read_text())["dialogues"] == summary["dialogues"]
        workers = {task["worker"] for task in stream.data}
        assert len(workers) == 2, f"3 shards should spread over both workers, ran on {workers}"

        again = augment(config_path=str(config), out=str(second))
    assert fake_llm.request_count == calls, "the second run must be served by the shared cache"
    assert again["dialogues"] == summary["dialogues"]
    assert (second / "dataset.jsonl").read_bytes() == (first / "dataset.jsonl").read_bytes()
    # the cache lives where the config says, not in a worker's working directory
    assert (tmp_path / "cache").is_dir()
    assert not any((tmp_path / f"worker{i}" / ".master").exists() for i in range(2))


def test_task_runner_from_config() -> None:
    """`dask_address` null means a local cluster of two single-thread processes."""
    from prefect_dask import DaskTaskRunner

    from flows.augment import dask_runner
    from flows.core.config import RunConfig

    local = dask_runner(RunConfig(task_runner="dask"))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True}
    remote = dask_runner(RunConfig(task_runner="dask", dask_address="tcp://127.0.0.1:8786"))
    assert remote.address == "tcp://127.0.0.1:8786"
