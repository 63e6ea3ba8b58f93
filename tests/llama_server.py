"""A real OpenAI-compatible server for tests and benchmarks: llama-cpp-python's server (its
`server` extra) serving the bundled SmolLM2-135M GGUF on a free loopback port.

The fake server (tests/fake_llm.py) always answers in the format it is asked for; this one
is a real, weak model that does not, which is what the pipeline meets in production.

Use::

    with LlamaServer() as server:
        env = server.role_env()   # MASTER__LMS__<ROLE>__... pointing every role at it
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Self

from modules.lm.embedded import gguf_path

MODEL_ALIAS = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """Starts `python -m llama_cpp.server` in its own process group; stops it on exit."""

    def __init__(self, n_ctx: int = 4096, log: Path | None = None, threads: int = 2) -> None:
        self.port = free_port()
        self.n_ctx = n_ctx
        self.log = log
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> Self:
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path())]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx)]
        command += ["--model_alias", MODEL_ALIAS, "--n_threads", str(self.threads)]
        self.process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"llama_cpp.server did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def kill(self) -> None:
        """SIGKILL, as a server dies: the requests it was serving get no answer."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def answered(self) -> int:
        """Chat completions this server has answered (uvicorn's access log; needs `log`)."""
        if self.log is None or not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count('"POST /v1/chat/completions')

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def role_env(
        self, max_tokens: int = 128, judge_max_tokens: int = 96, adapter: str = "turn"
    ) -> dict[str, str]:
        """Every role on this server with a `hosted_vllm/` id, one call at a time; the judge
        with the schema in json_object form, the structured output this server honours."""
        env: dict[str, str] = {}
        for role in ("WEAK", "PEER", "STRONG", "JUDGE"):
            prefix = f"MASTER__LMS__{role}__"
            env[prefix + "MODEL"] = f"hosted_vllm/{MODEL_ALIAS}"
            env[prefix + "API_BASE"] = self.base_url
            env[prefix + "MAX_CONCURRENCY"] = "1"
            env[prefix + "MAX_TOKENS"] = str(judge_max_tokens if role == "JUDGE" else max_tokens)
            env[prefix + "ADAPTER"] = adapter
        env["MASTER__LMS__JUDGE__STRUCTURED_OUTPUT"] = "json_object"
        return env

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
