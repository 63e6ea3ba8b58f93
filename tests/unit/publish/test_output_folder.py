"""Versions in an output folder: the atomic switch (killed at random moments), retention,
adoption of a folder written before versions, and refusal of files no run wrote."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.publish.versions import (
    CONTRACT,
    ForeignFilesError,
    OutputFolder,
    Release,
    version_id,
)

PROJECT = Path(__file__).resolve().parents[3]


def staged_version(folder: OutputFolder, tag: str, names: tuple[str, ...] = CONTRACT) -> Path:
    """A staged run whose every file names `tag` (hf/ a folder holding one)."""
    staged = folder.stage()
    for name in names:
        if name == "hf":
            (staged / "hf").mkdir()
            (staged / "hf" / "state.json").write_text(tag)
        elif name == "summary.json":
            (staged / name).write_text(json.dumps({"tag": tag, "seeds": {}, "quality": {},
                                                   "config_hash": "x"}))  # fmt: skip
        else:
            (staged / name).write_text(tag)
    return staged


def tag_of(path: Path) -> str:
    if path.name == "hf":
        return (path / "state.json").read_text()
    if path.name == "summary.json":
        return json.loads(path.read_text())["tag"]
    return path.read_text()


def test_a_published_version_is_read_through_the_same_names(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.prepare()
    assert folder.current() is None
    first = folder.publish(staged_version(folder, "one"), "20260101T000000Z-aaaaaaaa")
    assert folder.current() == first
    assert all(tag_of(folder.root / name) == "one" for name in CONTRACT)
    second = folder.publish(staged_version(folder, "two"), "20260102T000000Z-bbbbbbbb")
    assert folder.current() == second
    assert all(tag_of(folder.root / name) == "two" for name in CONTRACT)
    assert [v.id for v in folder.versions()] == [first.id, second.id]
    assert tag_of(first.path / "dataset.parquet") == "one"  # the old version is kept whole


def test_a_name_the_new_version_lacks_disappears_from_the_folder(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.publish(staged_version(folder, "one"), "20260101T000000Z-aaaaaaaa")
    without_hf = tuple(n for n in CONTRACT if n != "hf")
    folder.publish(staged_version(folder, "two", without_hf), "20260102T000000Z-bbbbbbbb")
    assert not os.path.lexists(folder.root / "hf")
    assert tag_of(folder.root / "dataset.parquet") == "two"


def test_the_newest_versions_are_kept_and_the_published_one_always(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    ids = [f"2026010{d}T000000Z-{d}" * 1 for d in range(1, 6)]
    for vid in ids:
        folder.publish(staged_version(folder, vid), vid)
    assert folder.prune(3) == ids[:2]
    assert [v.id for v in folder.versions()] == ids[2:]
    for n in range(3):
        folder.set_aside(staged_version(folder, f"attempt{n}"), f"2026020{n}T000000Z-f")
    folder.prune(1)
    assert [v.id for v in folder.versions()] == ids[-1:]
    assert [v.id for v in folder.attempts()] == ["20260202T000000Z-f"]
    assert folder.current() is not None and folder.current().id == ids[-1]  # type: ignore[union-attr]


def test_an_attempt_set_aside_leaves_the_published_version(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    folder.publish(staged_version(folder, "good"), "20260101T000000Z-aaaaaaaa")
    attempt = folder.set_aside(staged_version(folder, "bad"), "20260102T000000Z-bbbbbbbb")
    assert attempt.path.parent == folder.root / "attempts" and not attempt.published
    assert all(tag_of(folder.root / name) == "good" for name in CONTRACT)


def test_ids_sort_by_time_and_a_second_run_of_the_same_second_gets_its_own(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    assert version_id("0123456789abcdef", datetime(2026, 12, 7, 2, 0, tzinfo=UTC)) == (
        "20261207T020000Z-01234567"
    )
    folder = OutputFolder(tmp_path / "out")
    one = folder.publish(staged_version(folder, "1"), "20261207T020000Z-01234567")
    two = folder.publish(staged_version(folder, "2"), "20261207T020000Z-01234567")
    assert two.id == "20261207T020000Z-01234567.2" and one.id < two.id


def test_a_folder_written_before_versions_is_adopted_as_the_previous_version(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("dataset.parquet", "report.md"):
        (out / name).write_text("legacy")
    (out / "hf").mkdir()
    (out / "hf" / "state.json").write_text("legacy")
    (out / "summary.json").write_text(json.dumps(
        {"tag": "legacy", "seeds": {"kept": 3}, "quality": {}, "config_hash": "abc"}))  # fmt: skip
    (out / "notes.txt").write_text("the user's own")
    folder = OutputFolder(out)
    folder.prepare()
    adopted = folder.current()
    assert adopted is not None and adopted.summary["config_hash"] == "abc"
    assert tag_of(out / "dataset.parquet") == "legacy" and tag_of(out / "hf") == "legacy"
    assert (out / "dataset.parquet").is_symlink()
    assert (out / "notes.txt").read_text() == "the user's own"  # not the contract's: untouched
    Release(folder, folder.stage(), adopted)  # a run can go on from here


def test_an_adoption_killed_half_way_is_finished_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "versions" / ".adopting").mkdir(parents=True)
    (out / "versions" / ".adopting" / "dataset.parquet").write_text("legacy")
    (out / "summary.json").write_text(json.dumps(
        {"tag": "legacy", "seeds": {}, "quality": {}, "config_hash": "abc"}))  # fmt: skip
    folder = OutputFolder(out)
    folder.prepare()
    assert tag_of(out / "dataset.parquet") == "legacy" and tag_of(out / "summary.json") == "legacy"
    assert not (out / "versions" / ".adopting").exists()


def test_files_no_run_wrote_are_refused_in_one_line_and_never_deleted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my own notes")
    (out / "dataset.jsonl").write_text("{}\n")
    with pytest.raises(ForeignFilesError) as raised:
        OutputFolder(out).prepare()
    message = str(raised.value)
    assert "\n" not in message and "README.md" in message and "dataset.jsonl" in message
    assert str(out) in message and "move them" in message
    assert (out / "README.md").read_text() == "my own notes"
    assert sorted(os.listdir(out)) == ["README.md", "dataset.jsonl"]


def test_what_a_killed_run_staged_is_cleared_by_the_next(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    staged = staged_version(folder, "killed")
    folder.prepare()
    assert not staged.exists()


SWITCHER = """
import sys, json
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from flows.publish.versions import OutputFolder
folder = OutputFolder(Path(sys.argv[1]))
for n in range(10_000):
    staged = folder.stage()
    for name in {names!r}:
        if name == "hf":
            (staged / "hf").mkdir(); (staged / "hf" / "state.json").write_text(str(n))
        elif name == "summary.json":
            (staged / name).write_text(json.dumps({{"tag": str(n), "seeds": {{}},
                "quality": {{}}, "config_hash": "x"}}))
        else:
            (staged / name).write_text(str(n))
    folder.publish(staged, f"20260101T000000Z-{{n:08d}}")
    folder.prune(3)
    print(n, flush=True)
"""


def test_a_kill_at_any_moment_of_the_switch_leaves_one_whole_version(tmp_path: Path) -> None:
    """A process publishes version after version; it is killed -9 at random moments, 25
    times. After each kill, every name in the folder reads the same version through
    `current`, and that version is whole; the next process goes on from there."""
    out = tmp_path / "out"
    script = tmp_path / "switch.py"
    script.write_text(SWITCHER.format(names=CONTRACT))
    rng = random.Random(7)
    seen_versions = set()
    for _ in range(25):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(out), str(PROJECT)], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one version published by this process
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        folder = OutputFolder(out)
        folder.prepare()  # what the next run does first: clears a half-staged version
        current = folder.current()
        assert current is not None
        tags = {name: tag_of(out / name) for name in CONTRACT}
        assert set(tags.values()) == {tags["summary.json"]}, tags
        assert all((current.path / name).exists() for name in CONTRACT)
        seen_versions.add(tags["summary.json"])
    assert len(seen_versions) > 1
