"""`master verify` sorts a labelled set right, each failure with its reason; the judge's
verdict is a check like the others, and its agreement with a person's labels is measured;
runs drop what fails and say so in summary.json."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import polars as pl
import pytest

from conftest import role_lms, run_cli
from fake_llm import FakeLLMServer
from flows.core.config import load_config
from flows.core.formats import alternates
from flows.runs.pipeline import run_pipeline

REFERENCE = "She sells 16 - 3 - 4 = 9 eggs for 9 * 2 = 18 dollars.\n#### 18"
QUESTION = "Janet's ducks lay 16 eggs. She eats 3 and bakes with 4. She sells the rest at $2."
WEAK = "She sells 16 - 3 = 13 eggs, so she makes 13 * 2 = 26 dollars. The answer is 26."
TEACHER = "You forgot the eggs she bakes with. Subtract those too, then multiply by the price."
STRONG = "She has 16 - 3 - 4 = 9 eggs left and earns 9 * 2 dollars. The answer is 18."
CLOSED = "http://127.0.0.1:9/v1"  # never called: these tests need no model
STRICT = ["fidelity", "judge", "structure", "answer_hidden", "no_calculation"]


def ec_row(
    name: str, weak: str = WEAK, teacher: str = TEACHER, strong: str = STRONG
) -> dict[str, Any]:
    return {
        "seed_id": name,
        "scenario": "error_correction",
        "domain": "math",
        "reference": REFERENCE,
        "conversations": [
            {"from": "human", "value": QUESTION},
            {"from": "gpt", "value": weak},
            {"from": "human", "value": teacher},
            {"from": "gpt", "value": strong},
        ],
    }


LOOP = STRONG + " " + " ".join(["I am sure of it and I am sure of it."] * 30)

# name -> (row, the hard checks it must fail)
LABELLED: dict[str, tuple[dict[str, Any], set[str]]] = {
    "correct": (ec_row("correct"), set()),
    "wrong_number": (ec_row("wrong_number", strong="So the answer is 17 dollars."), {"fidelity"}),
    "revealed": (
        ec_row("revealed", teacher="Subtract the baking eggs: the total should be 18 dollars."),
        {"answer_hidden"},
    ),
    "leaked": (
        ec_row("leaked", strong=STRONG + "\nTeacher: Well done, that is right."),
        {"role_leakage"},
    ),
    "truncated": (ec_row("truncated", strong=STRONG + " Next we check that the"), {"truncated"}),
    "loop": (ec_row("loop", strong=LOOP), {"repetition"}),
    "empty": (ec_row("empty", teacher="   "), {"empty"}),
    "teacher_echo": (ec_row("teacher_echo", teacher="Let me see. " + WEAK), {"echo"}),
    "strong_echo": (ec_row("strong_echo", strong=TEACHER), {"fidelity", "echo"}),
    "calculating_analogy": (
        {
            "seed_id": "calculating_analogy",
            "scenario": "analogy",
            "domain": "math",
            "reference": REFERENCE,
            "conversations": [
                {"from": "human", "value": QUESTION + "\n\nFirst 16 - 3 - 4 = 9, then times 2."},
                {"from": "gpt", "value": STRONG},
                {
                    "from": "human",
                    "value": "Good job, please take a look at this similar question.",
                },
                {"from": "gpt", "value": "The answer is 7."},
            ],
        },
        {"no_calculation"},
    ),
    "correct_debate": (
        {
            "seed_id": "correct_debate",
            "scenario": "debate",
            "domain": "math",
            "reference": REFERENCE,
            "conversations": [
                {"from": "human", "value": QUESTION},
                {"from": "gpt", "value": "I get 26 dollars."},
                {"from": "human", "value": "I think we must also remove the baking eggs."},
                {"from": "gpt", "value": "Both agree on removing 7 eggs: she earns $18."},
            ],
        },
        set(),
    ),
    "broken_code": (
        {
            "seed_id": "broken_code",
            "domain": "code",
            "reference": "```python\ndef add(a, b):\n    return a + b\n```",
            "conversations": [
                {"from": "human", "value": "Write a function that adds two numbers."},
                {"from": "gpt", "value": "```python\ndef add(a, b)\n    return a + b\n```"},
            ],
        },
        {"fidelity"},
    ),
}


def _write_labelled(path: Path) -> None:
    rows = [row for row, _ in LABELLED.values()]
    rows.append({"seed_id": "no_conversation", "text": "not a dialogue"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _judge_responder(body: dict[str, Any]) -> str | None:
    if body.get("model") != "judge-model":
        return None
    text = json.dumps(body["messages"])
    bad = "procedural slip" in text
    return (
        f"[[ ## verdict ## ]]\n{'procedural_errors' if bad else 'correct'}\n\n"
        f"[[ ## score ## ]]\n{2 if bad else 5}\n\n"
        f"[[ ## reason ## ]]\n{'The revision skips a step.' if bad else 'Faithful.'}\n\n"
        "[[ ## completed ## ]]"
    )


def test_verify_sorts_a_labelled_set_with_the_right_reasons(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    data = tmp_path / "labelled.jsonl"
    _write_labelled(data)
    config = write_config(role_lms(CLOSED), quality={"judge": False, "hard": STRICT})
    out = tmp_path / "verify"
    proc = run_cli(
        "verify", "--config", str(config), "--in", str(data), "--out", str(out), "--no-judge"
    )
    assert proc.returncode == 0, proc.stderr
    verdicts = pl.read_parquet(out / "verdicts.parquet")
    got = {
        row["seed_id"]: set(filter(None, row["failed"].split(",")))
        for row in verdicts.iter_rows(named=True)
    }
    assert got == {name: expected for name, (_, expected) in LABELLED.items()}
    reasons = {row["seed_id"]: row["reason"] for row in verdicts.iter_rows(named=True)}
    assert "17" in reasons["wrong_number"] and "18" in reasons["wrong_number"]
    assert "states the answer (18)" in reasons["revealed"]
    assert "teacher" in reasons["leaked"]
    assert "mid-sentence" in reasons["truncated"]
    assert "repetition loop" in reasons["loop"]
    assert "empty" in reasons["empty"]
    assert (
        "turn 3 (teacher) repeats turn 2 (weak_student) after a 3-word" in reasons["teacher_echo"]
    )
    assert "turn 4 (strong_student) repeats turn 3 (teacher) verbatim" in reasons["strong_echo"]
    assert "calculates" in reasons["calculating_analogy"]
    assert "does not parse" in reasons["broken_code"]
    unreadable = pl.read_parquet(out / "rejects.parquet")
    assert unreadable["seed_id"].to_list() == ["no_conversation"]
    assert unreadable["location"][0].endswith(f":{len(LABELLED) + 1}")
    summary = json.loads((out / "verify_summary.json").read_text())
    assert summary["verified"] == len(LABELLED) and summary["unreadable"] == 1
    assert summary["accepted"] == 2 and summary["rejected"] == len(LABELLED) - 2
    assert summary["pass_rates"]["fidelity"] < 1.0
    assert "pass" in proc.stdout and "fidelity" in proc.stdout


def test_verify_takes_references_from_a_seeds_file_and_the_judge_from_the_fake_server(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [ec_row("good"), ec_row("slip", strong=STRONG + " A procedural slip here.")]
    for row in rows:
        del row["reference"]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"id": sid, "question": QUESTION, "reference": REFERENCE, "domain": "math"})
            + "\n"
            for sid in ("good", "slip")
        )
    )
    with FakeLLMServer(responder=_judge_responder) as server:
        config = write_config(role_lms(server.base_url), quality={"hard": STRICT})
        out = tmp_path / "verify"
        args = ["verify", "--config", str(config), "--in", str(data), "--seeds", str(seeds)]
        proc = run_cli(*args, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert server.count_by_model() == {"judge-model": 2}
        verdicts = pl.read_parquet(out / "verdicts.parquet")
        by_id = {r["seed_id"]: r for r in verdicts.iter_rows(named=True)}
        assert by_id["good"]["accepted"] and by_id["good"]["judge_score"] == 5
        assert by_id["slip"]["failed"] == "judge"
        assert "skips a step" in by_id["slip"]["judge_reason"]
        # verifying again is answered by the cache
        proc = run_cli(*args, "--out", str(tmp_path / "again"))
        assert proc.returncode == 0 and server.request_count == 2


def test_verify_measures_each_check_and_the_judge_against_a_persons_labels(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    slip = STRONG + " A procedural slip here."
    rows = {  # id -> (row, label); the fake judge fails exactly the rows with "procedural slip"
        "good1": (ec_row("good1"), "ok"),
        "good2": (ec_row("good2", strong=STRONG + " Done."), "ok"),
        "good3": (ec_row("good3", strong=STRONG + " I checked it."), "ok"),
        "slip": (ec_row("slip", strong=slip), "procedural_errors"),  # the judge sees it
        "missed": (ec_row("missed", strong=STRONG + " (9 is 16 - 7.)"), "procedural_errors"),
        "false_alarm": (ec_row("false_alarm", strong=slip + " Fine."), "ok"),
        "echoed": (ec_row("echoed", teacher=WEAK), ["echo"]),  # the judge passes it
    }
    data, labels = tmp_path / "data.jsonl", tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row, _ in rows.values()))
    labels.write_text(
        "".join(json.dumps({"id": k, "label": label}) + "\n" for k, (_, label) in rows.items())
        + json.dumps({"id": "not_in_the_data", "label": "ok"})
        + "\n"
    )
    out = tmp_path / "verify"
    with FakeLLMServer(responder=_judge_responder) as server:
        config = write_config(role_lms(server.base_url), quality={"hard": STRICT})
        args = ["verify", "--config", str(config), "--in", str(data), "--out", str(out)]
        proc = run_cli(*args, "--labels", str(labels))
    assert proc.returncode == 0, proc.stderr
    calibration = json.loads((out / "verify_summary.json").read_text())["calibration"]
    assert calibration["labelled"] == 7 and calibration["unmatched_ids"] == ["not_in_the_data"]
    judge = calibration["agreement"]["judge"]
    assert (judge["tp"], judge["fp"], judge["fn"], judge["tn"]) == (1, 1, 2, 3)
    assert judge["precision"] == 0.5 and judge["recall"] == round(1 / 3, 4)
    assert judge["kappa"] == round(2 / 23, 4)  # (4/7 - 26/49) / (1 - 26/49)
    assert calibration["agreement"]["echo"]["kappa"] == 1.0
    dropped = calibration["agreement"]["filter"]  # the strict filter: the judge, the echo
    assert (dropped["tp"], dropped["fp"], dropped["fn"], dropped["tn"]) == (2, 1, 1, 3)
    table = proc.stdout.split("agreement with", 1)[1].splitlines()
    assert "7 labelled dialogues (1 labels matched no row)" in table[0]
    assert ["judge", "7", "3", "2", "50.0%", "33.3%", "0.09"] in [line.split() for line in table]
    verdicts = pl.read_parquet(out / "verdicts.parquet")
    assert dict(zip(verdicts["seed_id"], verdicts["label"], strict=True))["echoed"] == "echo"

    labels.write_text('{"id": "good1", "label": "ok"}\n{"id": "slip", "label": "wrong"}\n')
    proc = run_cli(*args, "--no-judge", "--labels", str(labels))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: {labels}:2: unknown defect kind 'wrong' (known: ok, ")


def test_a_run_drops_failing_dialogues_and_summary_matches_rejects(
    write_config: Callable[..., Path], embedder: Any, tmp_path: Path
) -> None:
    with FakeLLMServer(responder=_judge_responder) as server:
        config = write_config(role_lms(server.base_url), sample=6, quality={"hard": STRICT})
        cfg = load_config(config, environ={})
        out = tmp_path / "out"
        result = run_pipeline(cfg, out, embedder=embedder)
        judged = server.count_by_model().get("judge-model", 0)
    quality = result.summary["quality"]
    dialogues_made = quality["accepted"] + quality["rejected"]
    assert dialogues_made == 6 and judged == 6
    rejects = pl.read_parquet(out / "rejects.parquet").filter(pl.col("stage") == "quality")
    assert rejects.height == quality["rejected"] > 0  # placeholder answers miss the numbers
    from_rejects = Counter(c for checks in rejects["checks"].to_list() for c in checks.split(","))
    assert quality["by_check"] == dict(sorted(from_rejects.items()))
    assert all(reason for reason in rejects["reason"].to_list())
    assert set(quality["pass_rates"]) >= {"fidelity", "judge", "empty", "truncated"}
    published = pl.read_parquet(out / "dataset.parquet")
    assert published.height == quality["accepted"] == sum(result.summary["dialogues"].values())
    assert all(json.loads(p)["program_version"] for p in published["provenance"].to_list())


def test_outputs_load_with_datasets_and_messages_alternate(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], embedder: Any, tmp_path: Path
) -> None:
    config = write_config(
        role_lms(fake_llm.base_url), sample=6, merge={"mode": "mix", "originals_per_dialogue": 0.5}
    )
    out = tmp_path / "out"
    result = run_pipeline(load_config(config, environ={}), out, embedder=embedder)
    parquet = datasets.load_dataset("parquet", data_files=str(out / "dataset.parquet"))["train"]
    sharegpt = datasets.load_dataset("json", data_files=str(out / "dataset.jsonl"))["train"]
    chats = datasets.load_dataset("json", data_files=str(out / "messages.jsonl"))["train"]
    on_disk = datasets.load_from_disk(str(out / "hf"))
    assert parquet.num_rows == sharegpt.num_rows == chats.num_rows == on_disk.num_rows
    assert Counter(parquet["scenario"])["original"] == 3  # 6 dialogues x 0.5
    assert result.summary["rows"]["published"] == parquet.num_rows == 9
    assert all(alternates(m) for m in chats["messages"])
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["master_augmented"]["formatting"] == "sharegpt"
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "## Provenance" in card and "openai/strong-model" in card
    assert "## Quality checks" in card and "## Lengths" in card
    for name in ("plot_counts.png", "plot_lengths.png", "plot_checks.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
        assert f"]({name})" in (out / "report.md").read_text()
    # the same inputs give the same rows in the same order
    again = tmp_path / "again"
    run_pipeline(load_config(config, environ={}), again, embedder=embedder)
    assert (out / "dataset.jsonl").read_bytes() == (again / "dataset.jsonl").read_bytes()


@pytest.mark.parametrize("hard", [["fidelity"], ["structure", "weak_flawed"]])
def test_hard_check_names_are_validated(write_config: Callable[..., Path], hard: list) -> None:
    cfg = load_config(write_config(role_lms(CLOSED), quality={"hard": hard}), environ={})
    assert cfg.quality.hard_checks() >= set(hard) - {"structure"}
    with pytest.raises(Exception, match="quality.hard"):
        load_config(write_config(role_lms(CLOSED), quality={"hard": ["fidelty"]}), environ={})


def test_a_run_where_every_dialogue_is_dropped_still_writes_a_loadable_dataset(
    tmp_path: Path,
) -> None:
    from flows.core.config import PublishConfig
    from flows.publish.writers import write_dataset

    write_dataset(tmp_path, [], PublishConfig())
    empty = pl.read_parquet(tmp_path / "dataset.parquet")  # `datasets` refuses 0-row splits
    assert empty.height == 0 and "conversations" in empty.columns
    assert not (tmp_path / "hf").exists()  # `datasets` cannot load a 0-row folder back
    assert (tmp_path / "dataset.jsonl").read_text() == ""


def test_the_judge_on_the_event_loop_makes_the_threaded_judges_request(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """Runs judge each dialogue in its task (averify_outcome); `master verify` judges in
    threads. Both must send the same request: same cache key, same verdict."""
    import asyncio

    from flows.quality.verification import Item, _ajudge_one, _judge_one
    from modules.lm.call_cache import CallStore
    from modules.lm.factory import build_role_lms
    from modules.lm.openai_compat import close_loop_sessions
    from modules.scenarios.judge import Judge

    turns = [
        {"speaker": "student", "text": WEAK},
        {"speaker": "teacher", "text": TEACHER},
        {"speaker": "student", "text": STRONG + " A procedural slip here."},
    ]
    item = Item("s1", turns, "error_correction", "math", QUESTION, REFERENCE)
    with FakeLLMServer(responder=_judge_responder) as server:
        cfg = load_config(write_config(role_lms(server.base_url)), environ={})
        judged = []
        for name in ("threaded", "loop"):
            store = CallStore(tmp_path / name)
            judge = Judge(build_role_lms(cfg.lms, store, ("judge",))["judge"])
            if name == "threaded":
                judged.append(_judge_one(judge, item))
            else:

                async def on_loop(judge: Judge = judge) -> Any:
                    try:
                        return await _ajudge_one(judge, item)
                    finally:
                        await close_loop_sessions()

                judged.append(asyncio.run(on_loop()))
            store.close()
        assert server.request_count == 2
    (threaded, error1, calls1), (looped, error2, calls2) = judged
    assert error1 is None and error2 is None
    assert threaded == looped and threaded is not None and threaded["score"] == 2
    assert len(calls1) == 1 and [c.key for c in calls1] == [c.key for c in calls2]
