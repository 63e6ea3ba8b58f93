"""The training files as the trainers themselves read them: LLaMA-Factory's own data pipeline
and a two-step LoRA run of the written recipe, and TRL's dataset preparation, each with the
bundled SmolLM2's tokenizer and weights. They run in the environment `make llamafactory` builds
(.venv-llamafactory; `make test` builds it first), through tests/trainer_probe.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import PROJECT
from flows.core.config import PublishConfig
from flows.core.formats import to_messages, to_sharegpt
from flows.publish.trainers import llamafactory
from flows.publish.trainers.tokenizer import counter
from flows.publish.writers import write_dataset

LF_VENV = PROJECT / ".venv-llamafactory"
LF_PY = LF_VENV / "bin" / "python"
MODEL = LF_VENV / "smollm2"
PROBE = PROJECT / "tests" / "trainer_probe.py"
CUTOFFS = ("4096", "40")  # nothing cut; most rows cut, some inside their trained turn


@pytest.fixture(autouse=True)
def _trainers_environment() -> None:
    if (LF_VENV / ".installed").exists():
        return
    why = f"{LF_VENV.name} is not built (`make llamafactory` builds it; `make test` does)"
    if os.environ.get("MASTER_REQUIRE_TRAINERS"):
        pytest.fail(why)
    pytest.skip(why)


def _turn(speaker: str, text: str) -> dict[str, Any]:
    return {"speaker": speaker, "role": None, "text": text, "finish_reason": None}


def _row(seed_id: str, scenario: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
    spoken = [_turn(s, t) for s, t in turns]
    conversations = to_sharegpt(spoken)
    return {"seed_id": seed_id, "source": "synth", "domain": "math", "scenario": scenario,
            "turns": spoken, "conversations": conversations,
            "messages": to_messages(conversations)}  # fmt: skip


ROWS = [
    _row("ec", "error_correction", [
        ("question", "Tom has 3 apples and buys 4 more. How many apples does he have?"),
        ("weak_student", "FLAWED-1 He has 12 apples, since 3 times 4 is 12."),
        ("teacher", "You multiplied; buying more means adding. Try again."),
        ("strong_student", "He has 3 + 4 = 7 apples. #### 7"),
    ]),
    _row("db", "debate", [
        ("question", "Is 91 a prime number?"),
        ("student_a", "FLAWED-2 Yes, 91 has no small divisors."),
        ("student_b", "FLAWED-3 I think it is even, so not prime."),
        ("student_a", "FLAWED-4 It is odd, so it must be prime."),
        ("student_b", "FLAWED-5 Then it is prime."),
        ("student_c", "No: 91 = 7 x 13, so it is composite. " + "Checking 7 x 13 again. " * 12),
    ]),
    _row("an", "analogy", [
        ("question", "What is 15% of 200?"),
        ("teacher", "A percent is a hundredth: multiply by 15 and divide by 100."),
        ("strong_student", "15% of 200 is 30."),
        ("teacher", "Good job, please take a look at this similar question. What is 20% of 50?"),
        ("strong_student", "20% of 50 is 10."),
    ]),
]  # fmt: skip
ORIGINAL = _row(
    "or", "original", [("question", "Name a primary colour."), ("strong_student", "Red.")]
)
FLAWED = ("FLAWED-1", "FLAWED-2", "FLAWED-3", "FLAWED-4", "FLAWED-5")


def _written(folder: Path, flawed_turns: str) -> Path:
    folder.mkdir()
    write_dataset(folder, [*ROWS, ORIGINAL], PublishConfig(flawed_turns=flawed_turns, name="probe"))
    return folder


#: torch on one thread: two threads spin against the other xdist worker's processes (a
#: 2-step run several times slower, benchmarks/decisions.md), and one core is a test's share
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def _probe(*args: str, timeout: float = 300) -> None:
    done = subprocess.run(
        [str(LF_PY), str(PROBE), *args], capture_output=True, text=True, timeout=timeout,
        env=ONE_THREAD,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _trained(folder: Path) -> list[str]:
    """The contents of the messages the files say are trained, in order."""
    return [
        m["content"]
        for line in _jsonl(folder / "messages.jsonl")
        for m in line["messages"]
        if m["role"] == "assistant" and m.get("weight", 1) == 1
    ]


@pytest.mark.parametrize("flawed_turns", ["mask", "train"])
def test_llamafactory_labels_exactly_the_trained_turns_and_cuts_rows_as_the_audit_says(
    flawed_turns: str, tmp_path: Path
) -> None:
    folder = _written(tmp_path / "out", flawed_turns)
    _probe("llamafactory", str(folder), str(MODEL), str(tmp_path / "lf.json"), *CUTOFFS)
    found = json.loads((tmp_path / "lf.json").read_text())
    eos, whole = found["eos"], found[CUTOFFS[0]]
    conversations = [r["conversations"] for r in _jsonl(folder / llamafactory.FILE)]
    assert len(whole) == len(conversations)

    # the tokens with a loss label are exactly those of the weight-1 turns (each with the
    # template's end of message), in order, and no flawed turn's
    labelled = "".join(row["labelled"] for row in whole)
    assert labelled == "".join(f"{text}{eos}\n" for text in _trained(folder))
    assert any(mark in labelled for mark in FLAWED) == (flawed_turns == "train")

    # the audit's counts are LLaMA-Factory's, cut or not (same tokenizer, here through
    # llama.cpp); a row is over cutoff_len exactly when LLaMA-Factory cuts it
    count = counter(llamafactory.MODEL, cache_dir=str(tmp_path / "no-cache")).count  # SmolLM2
    masking = flawed_turns == "mask"
    for cutoff in CUTOFFS:
        for conversation, row in zip(conversations, found[cutoff], strict=True):
            lengths = llamafactory.message_lengths(conversation, count)
            fit = llamafactory.fit(lengths, int(cutoff), mask_history=masking)
            assert fit.kept == len(row["input_ids"])
            assert fit.labelled == sum(1 for t in row["labels"] if t != -100)
    cut = [
        llamafactory.fit(llamafactory.message_lengths(c, count), int(CUTOFFS[1]), masking)
        for c in conversations
    ]
    assert any(f.labelled < f.labelled_full for f in cut)  # the small cutoff bites


def test_trl_prepares_a_completion_loss_on_exactly_the_weight_1_turns(tmp_path: Path) -> None:
    folder = _written(tmp_path / "out", "mask")
    _probe("trl", str(folder), str(MODEL), str(tmp_path / "trl.json"))
    found = json.loads((tmp_path / "trl.json").read_text())
    trained = _trained(folder)
    assert len(found) == len(trained)
    for row, text in zip(found, trained, strict=True):
        # the completion and SmolLM2's chat-template end of turn, nothing of the prompt
        assert row["labelled"] == f"{text}<|im_end|>\n"


def test_the_written_recipe_trains_two_lora_steps_on_cpu(tmp_path: Path) -> None:
    folder = _written(tmp_path / "out", "mask")
    saves = tmp_path / "saves"
    overrides = {
        # this machine and model, not the paper's: CPU, no bf16, the bundled SmolLM2
        "model_name_or_path": MODEL, "output_dir": saves, "bf16": "false", "max_steps": 2,
        "preprocessing_num_workers": 1, "plot_loss": "false",
        "report_to": "none", "save_steps": 2, "logging_steps": 1,
    }  # fmt: skip
    done = subprocess.run(
        [str(LF_VENV / "bin" / "llamafactory-cli"), "train", llamafactory.RECIPE_FILE,
         *(f"{k}={v}" for k, v in overrides.items())],
        cwd=folder, capture_output=True, text=True, timeout=540, env=ONE_THREAD,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((saves / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert state["global_step"] == 2 and len(losses) == 2 and all(x > 0 for x in losses)
    assert (saves / "adapter_model.safetensors").stat().st_size > 0
