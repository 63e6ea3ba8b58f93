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
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

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


class Stack:
    """A Prefect server, the work pool, the project's deployments and a process worker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update(
            PREFECT_HOME=str(root / "prefect-home"),
            PREFECT_API_URL=self.api,
            PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root / 'prefect.db'}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",
            PREFECT_WORKER_QUERY_SECONDS="1",
            DO_NOT_TRACK="1",
            MASTER_PROJECT_DIR=str(PROJECT),  # the deployments' pull step (prefect.yaml)
            MASTER_CANARY_KEY=CANARY,  # the worker's runs read the key from their environment
        )
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as sink:
            proc = subprocess.Popen(
                cmd,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=self.root,  # not the project: the pull step must set the directory
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def cli(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run(
            [PREFECT, *args], cwd=PROJECT, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"`prefect {' '.join(args)}` exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n"
            f"--- worker log ---\n{self.worker_log()}"
        )
        return done.stdout

    def worker_log(self) -> str:
        return log_tail(self.logs / "worker.log")

    def up(self) -> None:
        # the server's one outbound call (the integration catalogue, bundled as a fallback)
        # goes to a dead proxy: no test touches the network
        server_env = {
            **self.env,
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        server = self.start(
            "server",
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            server_env,
        )
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            assert server.poll() is None, f"server exited:\n{log_tail(self.logs / 'server.log')}"
            try:
                if httpx.get(f"{self.api}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (
                f"server not healthy in {SERVER_TIMEOUT}s:\n{log_tail(self.logs / 'server.log')}"
            )
            time.sleep(0.5)
        self.cli("work-pool", "create", "master-process", "--type", "process")
        self.deployed = self.cli("--no-prompt", "deploy", "--all")
        self.worker = self.start(
            "worker",
            [PREFECT, "worker", "start", "--pool", "master-process"]
            + ["--name", "test-worker", "--install-policy", "never"],
            self.env,
        )

    def state(self, run_id: str) -> dict[str, Any]:
        with httpx.Client(base_url=self.api, timeout=30) as client:
            return client.get(f"/flow_runs/{run_id}").json()["state"]

    def wait_final(self, run_id: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """The run's state once it is final (Completed, Failed, Cancelled, Crashed)."""
        deadline = time.monotonic() + timeout
        while (state := self.state(run_id))["type"] not in FINAL:
            assert time.monotonic() < deadline, f"{run_id} still {state}\n{self.worker_log()}"
            time.sleep(1)
        return state

    def run_logs(self, run_id: str, *expected: str, timeout: float = 60) -> list[str]:
        """The run's log messages once one contains each `expected` text: the flow-run process
        sends its logs in batches, the last of them after the run's final state."""
        deadline = time.monotonic() + timeout
        while True:
            with httpx.Client(base_url=self.api, timeout=30) as client:
                found = client.post(
                    "/logs/filter",
                    json={"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"},
                ).json()
            lines = [entry["message"] for entry in found]
            if all(any(e in line for line in lines) for e in expected):
                return lines
            if time.monotonic() > deadline:
                return lines  # the caller's assertions name what is missing
            time.sleep(1)


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One server and worker for the module's tests (they run on one xdist worker)."""
    served = Stack(tmp_path_factory.mktemp("prefect"))
    try:
        served.up()
        yield served
    finally:
        for proc in reversed(served.procs):
            stop_group(proc)


def _run_id(output: str) -> str:
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, f"no flow run id in:\n{output}"
    return match.group(1)


pytestmark = pytest.mark.xdist_group("prefect_server")


def test_deployment_runs_on_a_worker(
    stack: Stack, fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    api, logs, cli = stack.api, stack.logs, stack.cli
    deployed = stack.deployed
    assert "augment/nightly" in deployed and "augment/adhoc" in deployed, deployed
    assert "optimize/experiment" in deployed, deployed
    worker = stack.worker
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
    row = next(line for line in compared.stdout.splitlines() if line.startswith(meta["version"]))
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
    written = [p for d in (tmp_path, stack.root) for p in d.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in written)
    for path in written:
        assert CANARY.encode() not in path.read_bytes(), path


class Receiver:
    """An operator's webhook on loopback: records every POSTed JSON body."""

    def __init__(self) -> None:
        bodies: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.bodies = bodies
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, run_id: str, timeout: float = 60) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [b for b in self.bodies if b.get("flow_run_id") == run_id]
            if found:
                return found[0]
            time.sleep(0.5)
        return None


def _nightly_env(delay_s: int) -> str:
    """The nightly deployment's job environment from prefect.yaml, its retry delay shortened."""
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    (nightly,) = [d for d in spec["deployments"] if d["name"] == "nightly"]
    env = dict(nightly["work_pool"]["job_variables"]["env"])
    assert env["PREFECT_FLOWS_DEFAULT_RETRIES"] == "1"
    env["PREFECT_FLOWS_DEFAULT_RETRY_DELAY_SECONDS"] = str(delay_s)
    return json.dumps(env)


def _seed_lines(n: int, skip: int = 0) -> list[str]:
    rows = (PROJECT / "data" / "seeds" / "gsm8k_train_sample.jsonl").read_text().splitlines()
    return rows[skip : skip + n]


def test_three_nights_publish_keep_the_last_good_version_and_alert_on_failure(
    stack: Stack, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """The nightly deployment, three nights, as an operator runs it: night 1 publishes;
    night 2 brings 5 new seeds with the endpoint down: it ends Failed (after its retry), the
    folder still holds night 1, and the webhook of deploy/alerts.yaml is called; night 3, the
    endpoint back, publishes the 5 seeds, and only their calls are made. (A night whose inputs
    did not change makes no call at all: it replays the stored run.) One run at a time: a
    second run queued while night 1 runs waits for its slot."""
    receiver = Receiver()
    alerts = subprocess.run(
        [sys.executable, str(PROJECT / "deploy" / "alerts.py")], cwd=PROJECT, text=True,
        env={**stack.env, "MASTER_ALERT_WEBHOOK_URL": receiver.url}, capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert alerts.returncode == 0, alerts.stderr[-3000:]

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(_seed_lines(8)) + "\n")
    out = tmp_path / "nightly"
    night = ["deployment", "run", "augment/nightly", "--job-variable", f"env={_nightly_env(1)}"]

    def params(config: Path) -> list[str]:
        return ["--params", json.dumps({"config_path": str(config), "out": str(out)})]

    def config_for(base_url: str) -> Path:
        return write_config(
            role_lms(base_url, key_env="MASTER_CANARY_KEY"),
            seeds={"sources": [{"path": str(seeds), "domain": "math", "name": "gsm8k"}]},
        )

    with FakeLLMServer() as first:
        port = first.port
        config = config_for(first.base_url)
        night1 = _run_id(stack.cli(*night, *params(config)))
        queued = _run_id(stack.cli(*night, *params(config)))
        deadline = time.monotonic() + 60
        while stack.state(queued)["name"] != "AwaitingConcurrencySlot":
            assert time.monotonic() < deadline, stack.state(queued)
            time.sleep(0.5)
        assert stack.state(night1)["type"] in {"PENDING", "RUNNING", "SCHEDULED"}
        stack.cli("flow-run", "cancel", queued)
        state = stack.wait_final(night1)
        assert state["type"] == "COMPLETED", f"{state}\n{stack.worker_log()}"
    summary1 = json.loads((out / "summary.json").read_text())
    assert summary1["changes"]["rows_added"] == summary1["rows"]["published"] == 8
    assert summary1["gates"]["passed"] and summary1["previous_version"] is None
    parquet1 = (out / "dataset.parquet").read_bytes()
    logs1 = stack.run_logs(night1, "kept 8 seeds", "seeds 8/8", "published version")
    # the pipeline's own lines reach the flow run's logs: its stages, progress, the gates
    assert any(line.startswith("kept 8 seeds") for line in logs1), logs1
    assert any(line.startswith("seeds 8/8, accepted 8") for line in logs1), logs1
    assert any(f"published version {summary1['version']}" in line for line in logs1), logs1

    # night 2: 5 more seeds, and nothing listens on the endpoint's port
    added = _seed_lines(5, skip=8)
    with seeds.open("a") as fh:
        fh.write("\n".join(added) + "\n")
    new_questions = [json.dumps(json.loads(line)["question"])[1:-1] for line in added]
    night2 = _run_id(stack.cli(*night, *params(config)))
    state = stack.wait_final(night2)
    assert state["type"] == "FAILED", state
    assert state["message"].startswith("not published, ") and "still holds version" in state[
        "message"
    ]  # fmt: skip
    assert summary1["version"] in state["message"]
    assert (out / "dataset.parquet").read_bytes() == parquet1
    assert json.loads((out / "summary.json").read_text())["version"] == summary1["version"]
    with httpx.Client(base_url=stack.api, timeout=30) as client:
        states = client.get("/flow_run_states/", params={"flow_run_id": night2}).json()
    assert "AwaitingRetry" in {s["name"] for s in states}  # retried once, then Failed
    alert = receiver.wait_for(night2)
    assert alert is not None, f"no alert for {night2}: {receiver.bodies}"
    assert alert["deployment"] == "nightly" and alert["state"] == "Failed"
    assert "not published" in alert["message"]
    logs2 = stack.run_logs(night2, "not published")
    assert any("gates failed" in line or "not published" in line for line in logs2), logs2
    assert len(list((out / "attempts").iterdir())) == 2  # the run and its retry, set aside

    # night 3: the endpoint back
    with FakeLLMServer(port=port) as back:
        night3 = _run_id(stack.cli(*night, *params(config)))
        state = stack.wait_final(night3)
        assert state["type"] == "COMPLETED", f"{state}\n{stack.worker_log()}"
        requests = back.requests
    summary3 = json.loads((out / "summary.json").read_text())
    changes = summary3["changes"]
    assert summary3["previous_version"] == summary1["version"]
    assert 0 < changes["rows_added"] <= 5 and changes["rows_removed"] == 0
    assert changes["rows_regenerated"] == 0 and changes["rows_unchanged"] == 8
    assert summary3["lm"]["calls"] == len(requests) > 0
    assert all(any(q in json.dumps(r) for q in new_questions) for r in requests)
    assert f"Changes since {summary1['version']}" in (out / "README.md").read_text()
    assert receiver.wait_for(night3, timeout=5) is None  # a good night alerts nobody
