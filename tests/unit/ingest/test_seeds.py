"""Seed ingestion: formats, bad rows, dedupe, decontamination, sampling, `master seeds`."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from conftest import SHARED_DATA, run_cli
from flows.core.config import SeedsConfig
from flows.ingest.seeds import SeedSourceError, load_more, load_seeds


def _cfg(*sources: dict, **extra: object) -> SeedsConfig:
    return SeedsConfig.model_validate({"sources": list(sources), **extra})


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_shared_sets_load_with_the_right_counts_and_stable_ids() -> None:
    cfg = _cfg(
        {"path": str(SHARED_DATA / "gsm8k/train.jsonl"), "domain": "math"},
        {
            "path": str(SHARED_DATA / "code_alpaca/code_alpaca_2k.json"),
            "domain": "code",
            "format": "alpaca",
        },
        {
            "path": str(SHARED_DATA / "self_instruct/user_oriented_instructions.jsonl"),
            "domain": "general",
            "format": "self_instruct",
        },
        dedupe={"near": False},
    )
    first = load_seeds(cfg)
    assert first.loaded == 7473 + 2017 + 252
    by_source = {
        s: sum(1 for x in first.seeds if x.source == s)
        for s in ("train", "code_alpaca_2k", "user_oriented_instructions")
    }
    assert by_source["train"] == 7473 and by_source["user_oriented_instructions"] == 252
    # two Code Alpaca rows have an empty output; no other row is lost
    assert first.rejected == 2 and by_source["code_alpaca_2k"] + first.exact_duplicates == 2015
    assert all(r.location for r in first.rejects)
    math = next(s for s in first.seeds if s.domain == "math")
    assert math.meta["final_answer"] and "####" in math.reference
    second = load_seeds(cfg)
    assert [s.id for s in first.seeds] == [s.id for s in second.seeds]


def test_planted_duplicates_and_contamination_are_removed(tmp_path: Path) -> None:
    train = [json.loads(x) for x in (SHARED_DATA / "gsm8k/train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (SHARED_DATA / "gsm8k/test.jsonl").read_text().splitlines()]
    originals = train[22:62]  # train line 21 is itself contaminated by the test set
    q = originals[0]["question"]
    words = originals[1]["question"].split()
    words[3], words[7], words[12] = "banana", "seventeen", "purple"
    planted = [
        {"question": q, "answer": "exact copy"},
        {"question": q.upper(), "answer": "case variant"},
        {"question": "  " + q.replace(" ", "   \t") + "  ", "answer": "space variant"},
        {"question": " ".join(words), "answer": "three words changed"},
        {"question": test[5]["question"], "answer": "from the test set"},
        {"question": "Please solve: " + test[9]["question"], "answer": "test set, wrapped"},
    ]
    path = _jsonl(tmp_path / "seeds.jsonl", originals + planted)
    cfg = _cfg(
        {"path": str(path), "domain": "math"},
        decontamination={"eval_sets": [{"path": str(SHARED_DATA / "gsm8k/test.jsonl")}]},
    )
    result = load_seeds(cfg)
    kept = {s.question for s in result.seeds}
    assert {o["question"] for o in originals} <= kept  # every distinct item survives
    assert len(result.seeds) == 40
    assert result.exact_duplicates == 3 and result.near_duplicates == 1
    assert result.contaminated == 2
    reasons = {r.location: (r.stage, r.reason, r.detail) for r in result.rejects}
    assert (
        reasons["seeds.jsonl:44"][0] == "dedupe"
        and "near duplicate" in reasons["seeds.jsonl:44"][1]
    )
    first_id = next(s.id for s in result.seeds if s.question == q)
    assert reasons["seeds.jsonl:41"] == ("dedupe", "exact duplicate", f"kept {first_id}")
    assert reasons["seeds.jsonl:45"][0] == "decontaminate"
    assert (
        "gsm8k" not in reasons["seeds.jsonl:45"][2] or "test.jsonl" in reasons["seeds.jsonl:45"][2]
    )


def test_bad_rows_are_rejected_with_reason_and_line_and_the_load_goes_on(tmp_path: Path) -> None:
    good = {"question": "What is 2 + 2?", "answer": "4"}
    lines = [
        "\ufeff" + json.dumps(good),  # a BOM on the first line is fine
        json.dumps({"question": "", "answer": "x"}),
        json.dumps({"question": "Q without answer"}),
        json.dumps({"question": 42, "answer": "x"}),
        json.dumps({"question": ["a", "list"], "answer": "x"}),
        '{"question": "broken json", ',
        json.dumps({"question": "big " * 400, "answer": "x"}),
        json.dumps({"question": "What is 3 + 3?", "answer": "6"}),
    ]
    path = tmp_path / "bad.jsonl"
    data = "\n".join(lines).encode("utf-8") + b"\n" + b'{"question": "caf\xe9", "answer": "x"}\n'
    path.write_bytes(data)
    result = load_seeds(_cfg({"path": str(path), "domain": "math"}, max_row_bytes=1000))
    assert [s.question for s in result.seeds] == ["What is 2 + 2?", "What is 3 + 3?"]
    got = {r.location: r.reason for r in result.rejects}
    assert got["bad.jsonl:2"] == "empty question"
    assert got["bad.jsonl:3"] == "missing field 'answer'"
    assert got["bad.jsonl:4"] == "field 'question' is a int, expected text"
    assert got["bad.jsonl:5"] == "field 'question' is a list, expected text"
    assert got["bad.jsonl:6"].startswith("malformed JSON")
    assert "over the 1,000-byte limit" in got["bad.jsonl:7"]
    assert got["bad.jsonl:9"].startswith("invalid UTF-8")
    assert result.rejected == 7 and result.loaded == 9


def test_csv_with_embedded_newlines_and_parquet_sources(tmp_path: Path) -> None:
    csv = tmp_path / "qa.csv"
    csv.write_text(
        'question,answer\n"Line one\nline two?","Yes,\nreally."\n"Q2?",""\nQ3?,A3\n',
        encoding="utf-8",
    )
    result = load_seeds(_cfg({"path": str(csv), "domain": "general"}))
    assert [s.question for s in result.seeds] == ["Line one\nline two?", "Q3?"]
    assert (
        result.rejects[0].location == "qa.csv:row 2"
        and result.rejects[0].reason == "empty reference"
    )

    pq = tmp_path / "qa.parquet"
    pl.DataFrame({"prompt": ["P1?", "P2?"], "response": ["R1", "R2"]}).write_parquet(pq)
    mapped = {
        "path": str(pq),
        "domain": "code",
        "fields": {"question": "prompt", "answer": "response"},
    }
    assert [s.reference for s in load_seeds(_cfg(mapped)).seeds] == ["R1", "R2"]


def test_sharegpt_first_exchange_with_system_prompt_and_skips(tmp_path: Path) -> None:
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "Be terse."},
                {"from": "human", "value": "Hi?"},
                {"from": "gpt", "value": "Hello."},
                {"from": "human", "value": "More?"},
                {"from": "gpt", "value": "No."},
            ]
        },
        {"conversations": [{"from": "gpt", "value": "I start."}, {"from": "human", "value": "?"}]},
        {
            "conversations": [
                {"from": "human", "value": "Plain question?"},
                {"from": "gpt", "value": "Plain answer."},
            ]
        },
    ]
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    result = load_seeds(_cfg({"path": str(path), "domain": "general", "format": "sharegpt"}))
    assert [(s.question, s.reference) for s in result.seeds] == [
        ("Be terse.\n\nHi?", "Hello."),
        ("Plain question?", "Plain answer."),
    ]
    assert result.skipped == 1 and result.rejected == 1
    assert "does not start with a human turn" in result.rejects[0].reason


def test_missing_file_and_unknown_column_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SeedSourceError, match=r"nope\.jsonl: seed file not found"):
        load_seeds(_cfg({"path": str(tmp_path / "nope.jsonl"), "domain": "math"}))
    path = _jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A"}])
    ref = {"path": str(path), "domain": "math", "fields": {"question": "prompt"}}
    with pytest.raises(SeedSourceError) as err:
        load_seeds(_cfg(ref))
    assert "qa.jsonl" in str(err.value) and "'prompt' not found" in str(err.value)


def test_sampling_is_reproducible_and_seed_dependent() -> None:
    src = {"path": str(SHARED_DATA / "gsm8k/train.jsonl"), "domain": "math"}
    a = [s.id for s in load_seeds(_cfg(src, sample=50)).seeds]
    b = [s.id for s in load_seeds(_cfg(src, sample=50)).seeds]
    c = [s.id for s in load_seeds(_cfg(src, sample=50, random_seed=7)).seeds]
    assert a == b and len(a) == 50 and a != c


_cli = run_cli


def test_master_seeds_writes_seeds_rejects_and_summary(tmp_path: Path) -> None:
    proc = _cli("seeds", "--out", str(tmp_path), "--sample", "9")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())["seeds"]
    assert summary["kept"] == 9 and summary["loaded"] == 90
    assert pl.read_parquet(tmp_path / "seeds.parquet").height == 9
    assert (
        pl.read_parquet(tmp_path / "rejects.parquet").height
        == summary["rejected"]
        + summary["exact_duplicates"]
        + summary["near_duplicates"]
        + summary["contaminated"]
    )


def test_an_unreachable_hub_dataset_is_one_line_saying_how_to_use_a_file(tmp_path: Path) -> None:
    proc = _cli("seeds", "--profile", "paper-mix", "--out", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "hf:microsoft/orca-math-word-problems-200k" in line and "`path:`" in line


def test_a_hub_source_is_streamed_through_datasets(tmp_path: Path) -> None:
    """The `hf:` path runs through datasets' streaming loader (here on a local dataset folder)."""
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", [{"q": f"Question {i}?", "a": f"Answer {i}"} for i in range(5)])
    ref = {"hf": str(folder), "domain": "general", "fields": {"question": "q", "answer": "a"}}
    result = load_seeds(_cfg(ref))
    assert [s.reference for s in result.seeds] == [f"Answer {i}" for i in range(5)]
    assert result.seeds[0].meta["location"].endswith(":train[0]")


def test_short_questions_that_differ_are_not_near_duplicates(tmp_path: Path) -> None:
    rows = [
        {"question": "Write a poem about cats.", "answer": "..."},
        {"question": "Write a poem about dogs.", "answer": "..."},
        {"question": "What is 12 + 30?", "answer": "42"},
        {"question": "What is 12 + 31?", "answer": "43"},
    ]
    result = load_seeds(
        _cfg({"path": str(_jsonl(tmp_path / "s.jsonl", rows)), "domain": "general"})
    )
    assert len(result.seeds) == 4 and result.near_duplicates == 0


def test_without_dedupe_near_and_case_duplicates_stay_and_a_repeated_row_is_one_seed(
    tmp_path: Path,
) -> None:
    question = "Tom has 12 apples and gives 5 of them to his sister. How many are left?"
    rows = [
        {"question": question, "answer": "7"},
        {"question": question.upper(), "answer": "7"},  # an exact duplicate, case aside
        {"question": question.replace("How many", "how many apples"), "answer": "7"},  # near
        {"question": question, "answer": "7"},  # the first row again: the same seed
    ]
    source = {"path": str(_jsonl(tmp_path / "s.jsonl", rows)), "domain": "math"}
    off = load_seeds(_cfg(source, dedupe={"exact": False, "near": False}))
    assert len(off.seeds) == 3 and len({s.id for s in off.seeds}) == 3
    assert off.exact_duplicates == 1 and off.near_duplicates == 0
    (again,) = [r for r in off.rejects if r.stage == "dedupe"]
    assert again.reason == "the same row again (same seed)" and again.location.endswith(":4")
    on = load_seeds(_cfg(source))
    assert len(on.seeds) == 1 and (on.exact_duplicates, on.near_duplicates) == (2, 1)


def test_parallel_sketches_find_the_same_near_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    import flows.ingest.dedupe as dedupe

    rows = [json.loads(x) for x in (SHARED_DATA / "gsm8k/train.jsonl").read_text().splitlines()]
    texts = [dedupe.canonical(r["question"]) for r in rows[:3000]]
    sequential = dedupe.near_duplicates(texts)
    monkeypatch.setattr(dedupe, "PARALLEL_FROM", 100)
    monkeypatch.setattr(dedupe, "_CHUNK", 700)
    assert dedupe.near_duplicates(texts) == sequential


def test_a_mapped_title_opens_the_question_and_a_missing_title_column_is_named(
    tmp_path: Path,
) -> None:
    rows = [{"title": "Sort a dict by value?", "question": "I have d = {...}.", "answer": "sorted"}]
    src = _jsonl(tmp_path / "procqa.jsonl", rows)
    mapped = {"title": "title", "question": "question", "answer": "answer"}
    seeds = load_seeds(_cfg({"path": str(src), "domain": "code", "fields": mapped})).seeds
    assert seeds[0].question == "Sort a dict by value?\n\nI have d = {...}."
    plain = load_seeds(_cfg({"path": str(src), "domain": "code"})).seeds
    assert plain[0].question == "I have d = {...}."  # unmapped: the title is not read
    with pytest.raises(SeedSourceError, match="field 'subject' not found"):
        load_seeds(_cfg({"path": str(src), "domain": "code", "fields": {"title": "subject"}}))


def test_unreadable_eval_sets_are_each_named_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.ingest.seeds as seeds_module

    def offline(dataset_id: str, *args: object):
        raise SeedSourceError(f"hf:{dataset_id}: cannot be reached (offline); point the "
                              "source's `path:` at a local copy")  # fmt: skip
        yield  # a generator, as read_hub is

    monkeypatch.setattr(seeds_module, "read_hub", offline)
    src = _jsonl(tmp_path / "s.jsonl", [{"question": "What is two plus two?", "answer": "4"}])
    evals = [
        {"path": str(src), "name": "local"},
        {"hf": "org/bench_a", "name": "a"},
        {"hf": "org/bench_b", "name": "b"},
    ]
    cfg = _cfg({"path": str(src), "domain": "math"}, decontamination={"eval_sets": evals})
    with pytest.raises(SeedSourceError) as caught:
        load_seeds(cfg)
    lines = str(caught.value).splitlines()
    assert lines == [
        "seeds.decontamination.eval_sets[1] (a): hf:org/bench_a: cannot be reached (offline); "
        "point its `path:` at a local copy",
        "seeds.decontamination.eval_sets[2] (b): hf:org/bench_b: cannot be reached (offline); "
        "point its `path:` at a local copy",
    ]


def test_backfill_loads_new_seeds_in_a_stable_order_and_says_when_a_source_runs_out(
    tmp_path: Path,
) -> None:
    import random

    words = "river planet copper violin harbor lantern meadow glacier tulip engine pepper".split()
    rng = random.Random(3)
    rows = [
        {"question": f"{i}: " + " ".join(rng.sample(words, 8)) + "?", "answer": str(i)}
        for i in range(40)
    ]
    src = _jsonl(tmp_path / "m.jsonl", rows)
    cfg = _cfg({"path": str(src), "domain": "math", "name": "m"}, sample=10, random_seed=1)
    first = load_seeds(cfg).seeds
    more = load_more(cfg, None, first, {"m": 6}, 1)
    fewer = load_more(cfg, None, first, {"m": 3}, 1)
    taken = {s.id for s in first}
    assert len(more.seeds) == 6 and not taken & {s.id for s in more.seeds}
    assert {s.id for s in fewer.seeds} <= {s.id for s in more.seeds}  # a rerun needing fewer
    assert more.exhausted == []
    rest = load_more(cfg, None, first, {"m": 100}, 2)
    assert len(rest.seeds) == 30 and rest.exhausted == ["m"]


def test_loading_tells_how_far_reading_decontamination_and_near_dedupe_have_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.ingest.dedupe
    import flows.ingest.seeds

    monkeypatch.setattr(flows.ingest.seeds, "TELL_EVERY", 10)
    monkeypatch.setattr(flows.ingest.dedupe, "TELL_EVERY", 10)
    train = [json.loads(x) for x in (SHARED_DATA / "gsm8k/train.jsonl").read_text().splitlines()]
    path = _jsonl(tmp_path / "seeds.jsonl", train[22:47])
    cfg = _cfg(
        {"path": str(path), "domain": "math", "name": "mine"},
        decontamination={"eval_sets": [{"path": str(SHARED_DATA / "gsm8k/test.jsonl")}]},
    )
    told: list[tuple[str, int, int]] = []
    result = load_seeds(cfg, tell=lambda *step: told.append(step))
    assert len(result.seeds) == 25
    assert [t for t in told if t[0] == "reading mine"] == [
        ("reading mine", 10, 0),
        ("reading mine", 20, 0),
        ("reading mine", 25, 25),  # over
    ]
    assert [t for t in told if t[0] == "decontamination"] == [
        ("decontamination", 10, 25),
        ("decontamination", 20, 25),
        ("decontamination", 25, 25),
    ]
    assert [t for t in told if t[0] == "near-dedupe"][-1] == ("near-dedupe", 25, 25)
