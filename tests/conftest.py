"""Shared fixtures: an isolated environment, the fake LLM server, configs that point at it.

No test reaches the network: remote roles point at the fake server on loopback, the embedded
model and MiniLM load from their installed files, and the Hugging Face hubs are set offline
here, for the tests and their child processes (the project itself never sets them offline).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from modules.runtime import setup  # noqa: E402

#: the tests' own choice: a `hf:` source or a Hub upload fails at once instead of reaching out
OFFLINE_HUBS = {"HF_HUB_OFFLINE": "1"}
os.environ.update(OFFLINE_HUBS)
setup()  # what the CLI and the flows do first: environment defaults, DSPy patches
from fake_llm import FakeLLMServer  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent
# CI lays a copy of shared/ beside the clone; MASTER_SHARED_DATA points elsewhere if needed.
SHARED_DATA = Path(os.environ.get("MASTER_SHARED_DATA", PROJECT.parent / "shared" / "data"))
BUNDLED = PROJECT / "data" / "seeds"


#: The xdist group of the tests marked `embedded`: each runs llama.cpp on both cores.
LLAMA_GROUP = "llama_cpp"


@pytest.hookimpl(tryfirst=True)  # xdist's own hook, which reads the groups, must come after
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs the suite on two xdist workers (`--dist loadgroup`). The tests marked
    `embedded` run llama.cpp on both cores (the embedded model, llama-cpp-python's server):
    they go to one worker, one at a time, so two of them never share the cores, while the
    other worker takes the rest, whose tests mostly wait on child processes."""
    for item in items:
        if item.get_closest_marker("embedded"):
            item.add_marker(pytest.mark.xdist_group(LLAMA_GROUP))


def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Stop a `--dist loadgroup` run whose llama.cpp tests came back from a worker without
    their group in their node ids: that suffix is how xdist keeps a group on one worker, and
    a pytest that drops it (9.2, pytest-dev/pytest-xdist#1386) or a hook run after xdist's
    would spread them over both workers without a word. The two files of such tests stand
    for all of them (the controller sees node ids, not marks)."""
    if node.config.getoption("dist") != "loadgroup":
        return
    files = ("tests/system/test_embedded.py::", "tests/system/test_real_server.py::")
    loose = [i for i in ids if i.startswith(files) and not i.endswith(f"@{LLAMA_GROUP}")]
    if loose:
        pytest.exit(
            f"--dist loadgroup left {len(loose)} llama.cpp tests out of their group (first: "
            f"{loose[0]}): see the pytest pin in pyproject.toml",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MASTER__ override or profile from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("MASTER__") or name == "MASTER_PROFILE":
            monkeypatch.delenv(name)


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def role_lms(base_url: str, key_env: str | None = None) -> dict[str, dict[str, object]]:
    """All four roles on the fake server, each under its own model id to tell requests apart."""
    temps = {"weak": 0.8, "peer": 0.6, "strong": 0.2, "judge": 0.0}
    return {
        role: {
            "model": f"openai/{role}-model",
            "api_base": base_url,
            "temperature": temp,
            "max_tokens": 256,
            **({"api_key_env": key_env} if key_env else {}),
        }
        for role, temp in temps.items()
    }


def bundled_sources() -> list[dict[str, str]]:
    return [
        {"path": str(BUNDLED / "gsm8k_train_sample.jsonl"), "domain": "math", "name": "gsm8k"},
        {
            "path": str(BUNDLED / "code_alpaca_sample.json"),
            "domain": "code",
            "format": "alpaca",
            "name": "code_alpaca",
        },
        {
            "path": str(BUNDLED / "self_instruct_user_oriented_sample.jsonl"),
            "domain": "general",
            "format": "self_instruct",
            "name": "self_instruct",
        },
    ]


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config whose roles use the given LMs, with its own cache and output folders."""

    def write(lms: dict[str, object], sample: int = 6, **sections: object) -> Path:
        data: dict[str, object] = {
            "lms": lms,
            "seeds": {"sources": bundled_sources(), "sample": sample, "random_seed": 5},
            "cache": {"dir": str(tmp_path / "cache")},
            "run": {"out": str(tmp_path / "out"), "concurrency": 8},
            # the fake server's answers are placeholders: check them, drop nothing, no judge
            # calls (tests about quality pass their own section)
            "quality": {"judge": False, "hard": []},
        }
        data.update(sections)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


WORDS = [
    "river", "planet", "copper", "violin", "harbor", "lantern", "meadow", "glacier", "tulip",
    "engine", "pepper", "canyon", "falcon", "marble", "orchid", "saddle", "thunder", "walnut",
    "zephyr", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "hazel", "indigo",
]  # fmt: skip


def tricky_seeds(path: Path, n: int) -> Path:
    """n general questions, no two near duplicates; every fourth is one `tricky_judge` fails."""
    rng = random.Random(7)
    with path.open("w") as fh:
        for i in range(n):
            words = " ".join(rng.sample(WORDS, 9))
            tricky = " (a tricky one)" if i % 4 == 0 else ""
            question = f"Question {i}{tricky}: what links {words} in a story about item {i * 7919}?"
            fh.write(json.dumps({"question": question, "answer": f"They all link {i}."}) + "\n")
    return path


def tricky_judge(body: dict[str, Any]) -> str | None:
    """A fake-server responder: the judge fails the dialogues of tricky questions (see
    `tricky_seeds`); the other roles answer as usual."""
    if body.get("model") != "judge-model":
        return None
    bad = "a tricky one" in json.dumps(body["messages"])
    return (
        f"[[ ## verdict ## ]]\n{'procedural_errors' if bad else 'correct'}\n\n"
        f"[[ ## score ## ]]\n{1 if bad else 5}\n\n[[ ## reason ## ]]\nAs read.\n\n"
        "[[ ## completed ## ]]"
    )


@functools.lru_cache(maxsize=65536)
def _bucket(word: str) -> int:
    return int(hashlib.md5(word.encode()).hexdigest()[:6], 16) % 256


def hashing_embedder(texts: Sequence[str]) -> np.ndarray:
    """A cheap stand-in for MiniLM in tests that are not about retrieval quality. Benchmarks
    use it too, to time the pipeline and not a model: each word's bucket is hashed once."""
    vectors = np.zeros((len(texts), 256), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            vectors[i, _bucket(word)] += 1.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-9)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`master ARGS` in a child process, as a user runs it, with the project as working dir."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def embedder() -> Callable[[Sequence[str]], np.ndarray]:
    return hashing_embedder


def finished_calls(cache_dir: Path) -> int:
    """LM calls stored in a call cache (slot index entries left out): the calls a run that
    was stopped had finished."""
    import diskcache

    with diskcache.Cache(str(cache_dir), disk=diskcache.JSONDisk) as cache:
        return sum(1 for key in cache.iterkeys() if not str(key).startswith("slot:"))


def wait_for_finished_calls(cache_dir: Path, at_least: int, timeout: float) -> bool:
    """Wait until a running process has committed `at_least` LM calls to its call cache.

    A kill -9 keeps only committed calls, and commits are grouped on a writer thread, so
    the calls a server has answered are not yet a sign of any on disk. The store is opened
    only once the run has created it (opening it first would write diskcache's default
    settings under the run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (cache_dir / "cache.db").exists() and finished_calls(cache_dir) >= at_least:
            return True
        time.sleep(0.02)
    return False


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM a child started with start_new_session, then SIGKILL what is left of its
    process group (the group may outlive its leader: a Dask nanny's worker, a Prefect
    worker's flow-run process)."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def latest_attempt(out: Path) -> Path:
    """The newest run an output folder set aside for failing its gates."""
    attempts = sorted((out / "attempts").iterdir())
    assert attempts, f"no attempt in {out}"
    return attempts[-1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a child's log, for assertion messages."""
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])
