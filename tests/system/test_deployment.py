"""The deployments end to end, as a user runs them: server, work pool, deploy, worker, run.

Everything is a real process: `prefect server start` on a free loopback port with its own
PREFECT_HOME and SQLite file, `prefect work-pool create`, `prefect deploy --all` from the
project root, `prefect worker start`, then `prefect deployment run 'augment/adhoc' --watch`.
The worker's flow-run process reaches the fake LLM server over loopback HTTP. Every process
started here is stopped (its whole process group) whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from conftest import PROJECT, finished_calls, log_tail, role_lms, run_cli, stop_group
from fake_llm import FakeLLMServer

PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_TIMEOUT = 180  # a cold server migrates its SQLite database first
RUN_TIMEOUT = 420
ARTIFACTS = {"augment-report", "augment-summary", "augment-lm-calls"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


CANARY = "sk-canary-deploy-5e1f0a9b7c3d"


def test_deployment_runs_on_a_worker(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        DO_NOT_TRACK="1",
        MASTER_PROJECT_DIR=str(PROJECT),  # the deployments' pull step (prefect.yaml)
        MASTER_CANARY_KEY=CANARY,  # the worker's runs read the key from their environment
    )
    # the server's one outbound call (the integration catalogue, bundled as a fallback) goes to
    # a dead proxy: no test touches the network
    server_env = {
        **env,
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, cmd: list[str], cmd_env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (logs / f"{name}.log").open("wb") as sink:
            proc = subprocess.Popen(
                cmd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,  # not the project: the pull step must set the directory
                env=cmd_env,
                start_new_session=True,
            )
        procs.append(proc)
        return proc

    def cli(*args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [PREFECT, *args],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"`prefect {' '.join(args)}` exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n"
            f"--- worker log ---\n{log_tail(logs / 'worker.log')}"
        )
        return done.stdout

    try:
        server = start(
            "server",
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            server_env,
        )
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            assert server.poll() is None, f"server exited:\n{log_tail(logs / 'server.log')}"
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (
                f"server not healthy in {SERVER_TIMEOUT}s:\n{log_tail(logs / 'server.log')}"
            )
            time.sleep(0.5)

        cli("work-pool", "create", "master-process", "--type", "process")
        deployed = cli("--no-prompt", "deploy", "--all")
        assert "augment/nightly" in deployed and "augment/adhoc" in deployed, deployed
        assert "optimize/experiment" in deployed, deployed
        worker = start(
            "worker",
            [PREFECT, "worker", "start", "--pool", "master-process"]
            + ["--name", "test-worker", "--install-policy", "never"],
            env,
        )

        config = write_config(role_lms(fake_llm.base_url, key_env="MASTER_CANARY_KEY"), sample=6)
        out = tmp_path / "deployed-out"
        params = {"config_path": str(config), "out": str(out), "sample": 6}
        ran = cli(
            "deployment",
            "run",
            "augment/adhoc",
            "--params",
            json.dumps(params),
            "--watch",
            "--watch-interval",
            "2",
            "--watch-timeout",
            str(RUN_TIMEOUT),
            timeout=RUN_TIMEOUT + 60,
        )
        assert worker.poll() is None, f"worker exited:\n{log_tail(logs / 'worker.log')}"
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", ran)
        assert match, f"no flow run id in:\n{ran}"
        run_id = match.group(1)

        with httpx.Client(base_url=api, timeout=30) as client:
            state = client.get(f"/flow_runs/{run_id}").json()["state"]
            assert state["type"] == "COMPLETED", (
                f"flow run {run_id} ended {state['type']}: {state.get('message')}\n"
                f"--- worker log ---\n{log_tail(logs / 'worker.log')}"
            )
            found = client.post(
                "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}
            ).json()
        keys = {a["key"] for a in found if a.get("key")}
        assert keys >= ARTIFACTS, f"artifacts of the run: {sorted(keys)}"
        report = next(a for a in found if a.get("key") == "augment-report")
        assert report["data"] == (out / "report.md").read_text(encoding="utf-8")

        for name in ("summary.json", "dataset.parquet", "report.md"):
            assert (out / name).is_file(), f"{name} not written; {sorted(os.listdir(out))}"
        summary = json.loads((out / "summary.json").read_text())
        assert sum(summary["dialogues"].values()) == 6, summary["dialogues"]
        assert summary["lm"]["calls"] == fake_llm.request_count > 0
        # the flow checks the key variable first: COMPLETED means the worker's run had it

        # cancelled half-way (`prefect flow-run cancel`, the worker ends the run's process):
        # every finished call is kept, and the next run makes only the calls that were not
        with FakeLLMServer(latency=1.0) as slow:  # about 30 calls, 2 at a time: 15 s
            cancel_config = write_config(
                role_lms(slow.base_url, key_env="MASTER_CANARY_KEY"),
                sample=9,
                run={"concurrency": 2},
                cache={"dir": str(tmp_path / "cancel-cache")},
            )
            params = {"config_path": str(cancel_config), "out": str(tmp_path / "cancel-out")}
            started = cli("deployment", "run", "augment/adhoc", "--params", json.dumps(params))
            cancel_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started).group(1)  # type: ignore[union-attr]
            assert slow.wait_for_requests(4, timeout=RUN_TIMEOUT), log_tail(logs / "worker.log")
            cli("flow-run", "cancel", cancel_id)
            deadline = time.monotonic() + 120
            with httpx.Client(base_url=api, timeout=30) as client:
                while (state := client.get(f"/flow_runs/{cancel_id}").json()["state"])[
                    "type"
                ] != "CANCELLED":
                    assert time.monotonic() < deadline, f"not cancelled: {state}"
                    time.sleep(1)
            finished = finished_calls(tmp_path / "cancel-cache")
            slow.reset()
            slow.latency = 0.0
            watch = ("--watch", "--watch-interval", "2", "--watch-timeout", str(RUN_TIMEOUT))
            rerun = cli("deployment", "run", "augment/adhoc", "--params", json.dumps(params),
                        *watch, timeout=RUN_TIMEOUT + 60)  # fmt: skip
            rerun_id = re.search(r"UUID:\s*([0-9a-f-]{36})", rerun).group(1)  # type: ignore[union-attr]
            with httpx.Client(base_url=api, timeout=30) as client:
                assert client.get(f"/flow_runs/{rerun_id}").json()["state"]["type"] == "COMPLETED"
            resumed = slow.request_count
        total = finished_calls(tmp_path / "cancel-cache")
        assert 0 < finished < total and resumed == total - finished, (finished, resumed, total)
        assert (
            json.loads((tmp_path / "cancel-out" / "summary.json").read_text())["lm"]["cache_hits"]
            >= finished
        )

        # the optimize/experiment deployment: an experiment runs on the worker, its figures
        # are the ones --compare gives for the saved version, no dev dialogue failed
        programs = tmp_path / "programs"
        opt_config = write_config(
            role_lms(fake_llm.base_url, key_env="MASTER_CANARY_KEY"),
            sample=12,
            scenarios={"proportions": {"error_correction": 1, "debate": 0, "analogy": 0}},
            optimize={"train_size": 4, "dev_size": 4, "programs_dir": str(programs)},
            cache={"dir": str(tmp_path / "opt-cache")},
        )
        params = {"config_path": str(opt_config), "scenario": "error_correction"}
        ran = cli("deployment", "run", "optimize/experiment", "--params", json.dumps(params),
                  "--watch", "--watch-interval", "2", "--watch-timeout", str(RUN_TIMEOUT),
                  timeout=RUN_TIMEOUT + 60)  # fmt: skip
        opt_id = re.search(r"UUID:\s*([0-9a-f-]{36})", ran).group(1)  # type: ignore[union-attr]
        with httpx.Client(base_url=api, timeout=30) as client:
            state = client.get(f"/flow_runs/{opt_id}").json()["state"]
            assert state["type"] == "COMPLETED", f"{state}\n{log_tail(logs / 'worker.log')}"
        (meta_path,) = (programs / "error_correction").glob("*.meta.json")
        meta = json.loads(meta_path.read_text())
        assert meta["dev_after"]["failed"] == 0 and meta["dev_after"]["ran"] == 4, meta
        compare_args = ("--scenario", "error_correction", "--compare")
        compared = run_cli(
            "optimize",
            "--config",
            str(opt_config),
            *compare_args,
            env={"MASTER_CANARY_KEY": CANARY},
        )
        row = next(
            line for line in compared.stdout.splitlines() if line.startswith(meta["version"])
        )
        assert abs(float(row.split(" | ")[1]) - meta["metric_after"]) <= 0.01, (row, meta)

        # the key never reaches a file the run, the server or the worker wrote, nor the
        # server's stored parameters, logs and artifacts
        with httpx.Client(base_url=api, timeout=30) as client:
            stored = [
                client.get(f"/flow_runs/{run_id}").text,
                client.post("/logs/filter", json={"limit": 200}).text,
                client.post("/artifacts/filter", json={}).text,
                client.post("/deployments/filter", json={}).text,
            ]
        assert all(CANARY not in text for text in stored)
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert any(p.suffix == ".db" for p in written)
        for path in written:
            assert CANARY.encode() not in path.read_bytes(), path
    finally:
        for proc in reversed(procs):
            stop_group(proc)
