"""Against a real OpenAI-compatible server with a real, weak model: llama-cpp-python's server
serving SmolLM2-135M. It writes sensible turns but no DSPy field markers, as small models in
production do: dialogues must still be generated, and the judge's verdicts must parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from llama_server import LlamaServer

pytestmark = pytest.mark.embedded  # llama.cpp on both cores: one at a time (tests/conftest.py)


# The run's limits end it before the test's own, so a slow run fails saying so, with the server
# stopped. They leave room for a run beside the other test worker (12 seeds' wall time on idle
# cores: benchmarks/RESULTS.md, real_endpoint). The demo's 9 seeds give 3 dialogues of each
# scenario; this test is the longest of the llama.cpp group, which `make test` runs one test
# at a time, so it takes no more.
@pytest.mark.timeout(900)
def test_nine_bundled_seeds_survive_a_real_server_with_a_small_model(tmp_path: Path) -> None:
    with LlamaServer(log=tmp_path / "server.log") as server:
        env = {
            **server.role_env(),
            "MASTER__SEEDS__SAMPLE": "9",
            "MASTER__CACHE__DIR": str(tmp_path / "cache"),
        }
        check = run_cli("lm", "check", env=env, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        # --force: a dialogue or two this model cannot finish must not keep the outputs from
        # the folder (the publish gates have their own tests)
        run = run_cli("run", "--out", str(tmp_path / "out"), "--force", env=env, timeout=760)
        assert run.returncode == 0, run.stdout + run.stderr
    assert not server.running  # the test stops the server it started

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    quality = summary["quality"]
    generated = quality["accepted"] + quality["rejected"]
    assert generated >= 7, quality  # at most 2 of 9 lost, as before at most 2 of 12
    lost_to_format = [r for r in quality["failures"] if "Format" in r or "AdapterParse" in r]
    assert not lost_to_format, quality["failures"]
    judge = summary["lm"]["by_role"]["judge"]
    assert judge["calls"] >= 1
    assert quality["unjudged"] < generated  # at least one real verdict parsed
    assert "judge" in quality["pass_rates"]
    for role in ("weak", "peer", "strong", "judge"):
        row = summary["lm"]["by_role"][role]
        assert {"format_repairs", "format_failures"} <= set(row)
