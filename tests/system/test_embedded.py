"""The embedded SmolLM2 model: every DSPy call parses, calls are serialised, `master run` works.

These assert structure, never content: the 135M model's answers are poor by design.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import dspy
import polars as pl
import pytest

from conftest import PROJECT
from flows.core.formats import alternates
from flows.core.records import Dialogue
from modules.lm.call_cache import ledger
from modules.lm.factory import build_lm
from modules.lm.settings import EMBEDDED_MODEL, LMSettings
from signatures import JudgeDialogue, WeakStudentAnswer

pytestmark = pytest.mark.embedded

# the demo's hard filter: the structure checks but the echo, which it flags (data/config.yaml)
STRUCTURE = ("empty", "role_leakage", "language", "length", "repetition", "truncated")


def _lm(max_tokens: int = 48) -> dspy.LM:
    return build_lm(
        "judge", LMSettings(model=EMBEDDED_MODEL, temperature=0.2, max_tokens=max_tokens), None
    )


def test_typed_fields_parse_even_when_the_answer_is_cut_short() -> None:
    judge = dspy.Predict(JudgeDialogue)
    judge.lm = _lm(max_tokens=12)  # too short to finish: the structure is closed for DSPy
    with ledger() as book:
        result = judge(question="What is 2+3?", reference="5", dialogue="Student: 2+3 = 5.")
    assert result.verdict in ("correct", "procedural_errors")
    assert isinstance(result.score, int)
    assert book.records[0].finish_reason in ("stop", "length")
    assert book.records[0].tokens_out > 0


def test_concurrent_calls_to_one_context_are_serialised() -> None:
    student = dspy.Predict(WeakStudentAnswer)
    student.lm = _lm()
    answers: list[str] = []
    errors: list[BaseException] = []

    def ask(q: str) -> None:
        try:
            answers.append(student(question=q).answer)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(f"What is {i} + {i}?",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(answers) == 3 and all(a.strip() for a in answers)


def test_make_run_writes_an_accepted_dialogue_of_every_scenario(tmp_path: Path) -> None:
    """`make run` on a fresh clone: the bundled config as it is (its seeds, token limits and
    filter), a new cache. The demo must show each scenario; SmolLM2 decodes deterministically
    (a seed per prompt), so a config change that loses one fails here, not for a newcomer."""
    out = tmp_path / "out"
    env = {**os.environ, "MASTER__CACHE__DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("embedded SmolLM2-135M-Instruct") == 1  # said once, plainly
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lm"]["calls"] > 0 and summary["lm"]["by_role"]["weak"]["calls"] > 0
    assert all(n >= 1 for n in summary["dialogues"].values()), summary["dialogues"]
    assert set(summary["dialogues"]) == {"error_correction", "debate", "analogy"}
    rows = pl.read_parquet(out / "dataset.parquet").to_dicts()
    assert len(rows) == sum(summary["dialogues"].values()) == summary["quality"]["accepted"]
    for row in rows:
        row["provenance"] = json.loads(row["provenance"])
        dialogue = Dialogue.model_validate(row)
        assert alternates([m.model_dump() for m in dialogue.messages])
        assert all(t.text.strip() for t in dialogue.turns)
        assert {"fidelity", "judge", "truncated"} <= set(dialogue.quality["checks"])
        assert all(dialogue.quality["checks"][c]["ok"] for c in STRUCTURE)  # the hard filter
    judged = summary["quality"]["accepted"] + summary["quality"]["rejected"]
    assert summary["lm"]["by_role"]["judge"]["calls"] >= judged  # every dialogue is judged
    assert (out / "README.md").exists() and (out / "plot_checks.png").exists()
    assert "Note." in (out / "report.md").read_text()


NO_NETWORK = r"""
import json, os, socket, sys
attempts = []
real_connect = socket.socket.connect

def guarded(self, address):
    if self.family != socket.AF_UNIX:
        attempts.append(repr(address))
        raise OSError("no network in this test")
    return real_connect(self, address)

socket.socket.connect = guarded
from modules.runtime import setup
setup()
from huggingface_hub import hf_hub_download
try:  # the guard catches a hub look-up: without local files, this one reaches out
    hf_hub_download("sentence-transformers/all-MiniLM-L6-v2", "config.json",
                    cache_dir=sys.argv[1])
except Exception:
    pass
canary = len(attempts)
attempts.clear()
from flows.planning.minilm import minilm_embedder
from modules.lm import embedded
shape = minilm_embedder()(["How many legs does a spider have?"]).shape
loaded = embedded._load(512)
switches = [os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")]
print(json.dumps({"canary": canary, "attempts": attempts, "shape": list(shape),
                  "vocab": loaded.llama.n_vocab(), "offline": switches}))
"""


def test_the_bundled_models_load_with_no_network_and_no_offline_switch(tmp_path: Path) -> None:
    """MiniLM and SmolLM2 load from their installed files: no connection is attempted, with
    HF_HUB_OFFLINE unset (nothing in the project sets it) and the Hub a closed port; MiniLM's
    runtime (OpenVINO) leaves no telemetry id in the home folder."""
    drop = {"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    env["HF_HOME"] = str(tmp_path / "hf-home")  # an empty hub cache: nothing to fall back on
    env["HOME"] = str(tmp_path / "home")  # where OpenVINO's telemetry would keep its id
    (tmp_path / "home").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", NO_NETWORK, str(tmp_path / "hub-cache")],
        capture_output=True, text=True, cwd=PROJECT, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["canary"] > 0  # the guard sees a hub look-up when one is made
    assert found["attempts"] == []
    assert found["shape"] == [1, 384] and found["vocab"] > 0
    assert found["offline"] == [None, None]
    assert not (tmp_path / "home" / "intel").exists()  # OpenVINO's telemetry never loaded
