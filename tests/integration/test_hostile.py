"""Hostile seed input: each case is a clear one-line error or a quarantined reject with its
reason, the good rows still load, and memory and time stay bounded."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import polars as pl
import pytest

from conftest import run_cli
from flows.core.config import SeedsConfig
from flows.ingest.seeds import SeedSourceError, load_seeds


def _good(n: int, start: int = 0) -> list[dict[str, str]]:
    return [
        {"question": f"What is {i} plus {i + 1}, counted slowly?", "answer": f"#### {2 * i + 1}"}
        for i in range(start, start + n)
    ]


def _load(path: Path) -> object:
    cfg = SeedsConfig.model_validate(
        {"sources": [{"path": str(path), "domain": "math"}], "dedupe": {"near": False}}
    )
    return load_seeds(cfg)


def test_a_ten_megabyte_row_is_rejected_and_the_rest_load(tmp_path: Path) -> None:
    rows = [json.dumps(r) for r in _good(3)]
    big = json.dumps({"question": "x" * (10 * 2**20), "answer": "1"})
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join([rows[0], big, rows[1], rows[2]]) + "\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = _load(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(result.seeds) == 3
    (reject,) = result.rejects
    assert reject.location == "big.jsonl:2" and "over the 1,000,000-byte limit" in reject.reason
    assert grown_mb < 200  # the row is measured and dropped, not parsed


def test_deeply_nested_json_is_a_reject_not_a_crash(tmp_path: Path) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "nested.jsonl"
    path.write_text(json.dumps(_good(1)[0]) + "\n" + '{"question": ' + nested + "}\n")
    result = _load(path)
    assert len(result.seeds) == 1
    assert "nested too deeply" in result.rejects[0].reason


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("seeds.jsonl", bytes(range(256)) * 64, "holds binary data"),
        ("seeds.json", b"question,answer\nWhat?,42\n", "holds csv content, not json"),
        ("seeds.parquet", b'{"question": "q", "answer": "a"}\n', "holds jsonl content"),
    ],
)
def test_a_file_that_is_not_what_its_extension_says_is_one_line(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SeedSourceError, match=message):
        _load(path)
    proc = run_cli("seeds", "--seeds", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_a_folder_of_a_thousand_tiny_files_loads_and_quarantines_the_bad_ones(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "seeds"
    for i, row in enumerate(_good(1000)):
        sub = folder / f"part{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"row{i:05d}.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "part0" / "image.jsonl").write_bytes(bytes(range(256)))
    (folder / "notes.txt").write_text("not seeds")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    out = str(tmp_path / "out")
    proc = run_cli("seeds", "--seeds", str(folder), "--sample", "1000", "--out", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["seeds"]
    assert summary["loaded"] == 1002 and summary["kept"] == 1000
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    quarantined = dict(zip(rejects["location"], rejects["reason"], strict=True))
    assert "binary data" in quarantined["part0/image.jsonl"]
    assert "unsupported file type .txt" in quarantined["notes.txt"]
    metas = pl.read_parquet(tmp_path / "out" / "seeds.parquet")["meta"].to_list()
    assert any(json.loads(m).get("location", "").startswith("part3/row") for m in metas)


def test_an_oversized_json_array_says_to_use_json_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.ingest.sources

    monkeypatch.setattr(flows.ingest.sources, "MAX_JSON_ARRAY_BYTES", 1000)
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(_good(50)))
    with pytest.raises(SeedSourceError, match="convert it to JSON Lines"):
        _load(path)
