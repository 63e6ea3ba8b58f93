"""The output folder as a nightly job sees it, through `master run`: each good run a new
version, a run that fails its gates leaves the published one and says so in one line,
`--force`, retention, `master versions` and `master diff`, and a folder no version owns."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import polars as pl

from conftest import PROJECT, latest_attempt, role_lms, run_cli
from fake_llm import FakeLLMServer


def _seeds(path: Path, n: int) -> dict[str, object]:
    """A seeds section reading the first n bundled GSM8K rows, all of them (no sample): a
    night with more rows keeps the earlier ones."""
    rows = (PROJECT / "data" / "seeds" / "gsm8k_train_sample.jsonl").read_text().splitlines()
    path.write_text("\n".join(rows[:n]) + "\n")
    return {"sources": [{"path": str(path), "domain": "math", "name": "gsm8k"}]}


def _run(config: Path, out: Path, *args: str, code: int = 0) -> tuple[dict, str]:
    proc = run_cli("run", "--config", str(config), "--out", str(out), *args)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    folder = out if code == 0 else latest_attempt(out)
    return json.loads((folder / "summary.json").read_text()), proc.stderr


def test_a_nightly_folder_keeps_its_last_good_version_through_a_failed_night(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    seeds = tmp_path / "seeds.jsonl"
    lms = role_lms(fake_llm.base_url)
    config = write_config(lms, seeds=_seeds(seeds, 6), publish={"keep_versions": 2})
    first, _ = _run(config, out)
    assert first["previous_version"] is None and first["gates"]["passed"]
    assert os.readlink(out / "current") == f"versions/{first['version']}"
    assert first["changes"]["rows_added"] == first["rows"]["published"] == 6

    _seeds(seeds, 9)
    second, _ = _run(config, out)
    assert second["previous_version"] == first["version"]
    assert second["changes"]["rows_added"] == 3 and second["changes"]["rows_unchanged"] == 6
    assert "## Changes since " + first["version"] in (out / "report.md").read_text()
    assert "## Changes since " + first["version"] in (out / "README.md").read_text()

    # a night with the endpoint down: exit 4, one line, the folder still holds night 2
    published = (out / "dataset.parquet").read_bytes()
    fake_llm.status_override = 503
    _seeds(seeds, 12)
    failed, err = _run(config, out, code=4)
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: not published, ") and second["version"] in line
    assert str(latest_attempt(out)) in line and "--force" in line
    assert not failed["gates"]["passed"] and failed["gates"]["failed"]
    assert (out / "dataset.parquet").read_bytes() == published
    assert json.loads((out / "summary.json").read_text())["version"] == second["version"]

    listed = run_cli("versions", str(out), "--json")
    assert listed.returncode == 0, listed.stderr
    versions = json.loads(listed.stdout)
    assert [v["id"] for v in versions if v["published"]] == [first["version"], second["version"]]
    assert [v["current"] for v in versions] == [False, True, False]
    assert versions[-1]["gates"] == "failed" and versions[-1]["rows"] == failed["rows"]["published"]
    table = run_cli("versions", str(out)).stdout
    assert f"* {second['version']}" in table and "attempt" in table

    diff = run_cli("diff", str(out), "--json")
    assert diff.returncode == 0, diff.stderr
    changes = json.loads(diff.stdout)
    assert (changes["from"], changes["to"]) == (first["version"], second["version"])
    new_ids = set(pl.read_parquet(out / "dataset.parquet")["seed_id"]) - set(
        pl.read_parquet(out / "versions" / first["version"] / "dataset.parquet")["seed_id"]
    )
    assert set(changes["seed_ids"]["added"]) == new_ids and len(new_ids) == 3
    text = run_cli("diff", str(out), first["version"][:-3], second["version"]).stdout  # a prefix
    assert text.startswith(f"{first['version']} -> {second['version']}")
    assert "added: " in text

    # --force publishes the failed run; keep_versions 2 prunes night 1
    forced, _ = _run(config, out, "--force")
    assert forced["gates"]["forced"] and forced["previous_version"] == second["version"]
    assert sorted(p.name for p in (out / "versions").iterdir()) == [
        second["version"], forced["version"]
    ]  # fmt: skip
    assert "failed, published anyway (--force)" in (out / "report.md").read_text()


def test_a_folder_of_files_no_run_wrote_is_refused_in_one_line_and_left_as_it_was(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    proc = run_cli("run", "--config", str(write_config(role_lms(fake_llm.base_url))),
                   "--out", str(out))  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: {out}: README.md is not from a MASTER run")
    assert (out / "README.md").read_text() == "my notes" and fake_llm.request_count == 0
    missing = run_cli("versions", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")


def test_a_folder_written_before_versions_becomes_the_previous_version(
    fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """The outputs of a run of an earlier release, files in the folder itself, are adopted as
    its previous version: nothing is deleted and the next run's changes are against them."""
    seeds = tmp_path / "seeds.jsonl"
    config = write_config(role_lms(fake_llm.base_url), seeds=_seeds(seeds, 6))
    out = tmp_path / "out"
    first, _ = _run(config, out)
    for name in os.listdir(out):  # as an earlier release left it: plain files, no versions
        link = out / name
        if link.is_symlink() and name != "current":
            target = link.resolve()
            link.unlink()
            os.rename(target, link)
    (out / "current").unlink()
    for leftover in (out / "versions").iterdir():
        leftover.rmdir()
    (out / "versions").rmdir()
    assert (out / "dataset.parquet").is_file() and not (out / "dataset.parquet").is_symlink()

    _seeds(seeds, 9)
    again, _ = _run(config, out)
    assert again["previous_version"] is not None and again["changes"]["rows_unchanged"] == 6
    adopted = out / "versions" / again["previous_version"]
    assert json.loads((adopted / "summary.json").read_text())["config_hash"] == first[
        "config_hash"
    ]  # fmt: skip

    # an unchanged night replays the stored run as a new version; its card says which
    replayed, _ = _run(config, out)
    assert replayed["run_cache"] == "hit" and replayed["previous_version"] == again["version"]
    card = (out / "README.md").read_text()
    assert f"Version `{replayed['version']}`. " in card and f"`{again['version']}`" not in card
    assert f"## Changes since {again['version']}" in card and replayed["lm"]["calls"] == 0
    assert replayed["changes"]["rows_unchanged"] == 9
