"""`publish.push_to_hub`: the upload sends the card and exactly the files it names, and those
files load with `datasets.load_dataset`. The Hub is unreachable here: the tests record the
calls made on huggingface_hub's client (a stand-in for HfApi that writes each commit into a
local folder, the "repo") and load that folder as the Hub would serve it."""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import polars as pl
import pytest
from huggingface_hub import CommitInfo, CommitOperationAdd, DatasetCard, constants

import flows.publish.writers as writers
from conftest import role_lms, run_cli
from fake_llm import FakeLLMServer
from flows.core.config import load_config
from flows.runs.pipeline import RunResult, run_pipeline

TOKEN = "hf_canary_5d1c9a7e3b"
REPO = "someone/classroom"


class RecordingHub:
    """HfApi as push_to_hub uses it: every call recorded, each commit written to `repo`."""

    def __init__(self, repo: Path, fail: Exception | None = None) -> None:
        self.repo, self.fail = repo, fail
        self.tags = repo.parent / "tags"  # revision=TAG reads the repo as tagged
        self.commits: list[str] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, **kwargs: Any) -> RecordingHub:  # HfApi(token=...)
        self.calls.append(("HfApi", kwargs))
        return self

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/datasets/{repo_id}"

    def create_commit(self, repo_id: str, operations: list[Any], **kwargs: Any) -> CommitInfo:
        self.calls.append(("create_commit", {"repo_id": repo_id, "operations": operations,
                                             **kwargs}))  # fmt: skip
        if self.fail:
            raise self.fail
        for op in operations:
            assert isinstance(op, CommitOperationAdd)
            target = self.repo / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, target)
        oid = f"{len(self.commits):040x}"
        self.commits.append(oid)
        url = f"https://huggingface.co/datasets/{repo_id}/commit/{oid}"
        return CommitInfo(commit_url=url, commit_message=kwargs["commit_message"],
                          commit_description="", oid=oid)  # fmt: skip

    def create_tag(self, repo_id: str, *, tag: str, revision: str, **kwargs: Any) -> None:
        """The tag points at `revision`: the repo as that commit left it, kept under tags/."""
        self.calls.append(("create_tag", {"repo_id": repo_id, "tag": tag, "revision": revision,
                                          **kwargs}))  # fmt: skip
        assert revision == self.commits[-1]
        shutil.copytree(self.repo, self.tags / tag)

    def uploaded(self) -> list[str]:
        commit = [kw for name, kw in self.calls if name == "create_commit"][-1]
        return [op.path_in_repo for op in commit["operations"]]


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RecordingHub:
    recorder = RecordingHub(tmp_path / "repo")
    monkeypatch.setattr(writers, "hub_client", lambda token: recorder(token=token))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests set it (conftest)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return recorder


def _run(
    write_config: Callable[..., Path], fake_llm: FakeLLMServer, out: Path, sample: int = 6
) -> RunResult:
    config = write_config(role_lms(fake_llm.base_url), sample=sample,
                          publish={"push_to_hub": REPO})  # fmt: skip
    return run_pipeline(load_config(config, environ={}), out, embedder=None)


def test_the_upload_is_the_card_and_exactly_the_files_it_names_and_it_loads(
    hub: RecordingHub,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    _run(write_config, fake_llm, out)

    assert [name for name, _ in hub.calls] == [
        "HfApi", "create_repo", "create_commit", "create_tag"
    ]  # fmt: skip
    assert hub.calls[0][1] == {"token": TOKEN}  # from the variable publish.token_env names
    assert hub.calls[1][1] == {
        "repo_id": REPO, "repo_type": "dataset", "private": True, "exist_ok": True
    }  # fmt: skip
    uploaded = hub.uploaded()
    card = DatasetCard.load(out / "README.md")
    configured = [f["path"] for c in card.data.configs for f in c["data_files"]]
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text)
    # the `default` config and the `chat` config (its messages) both read dataset.parquet
    assert configured == ["dataset.parquet", "dataset.parquet"] and len(shown) == 3
    configured = configured[:1]
    # the data uploaded is exactly the card's configs' data files; beside them only the card
    # and the images it shows
    assert [p for p in uploaded if p != "README.md" and p not in shown] == configured
    assert sorted(uploaded) == sorted(["README.md", *configured, *shown])
    assert (hub.repo / "README.md").read_bytes() == (out / "README.md").read_bytes()

    # the repo as uploaded loads with `datasets`, through the card's configs, to the run's rows
    loaded = datasets.load_dataset(str(hub.repo), cache_dir=str(tmp_path / "hf-cache"))
    assert list(loaded) == ["train"]
    published = pl.read_parquet(out / "dataset.parquet")
    assert loaded["train"].num_rows == published.height > 0
    assert loaded["train"]["seed_id"] == published["seed_id"].to_list()
    assert loaded["train"]["conversations"] == published["conversations"].to_list()
    chat = datasets.load_dataset(str(hub.repo), "chat", cache_dir=str(tmp_path / "hf-cache"))
    assert chat["train"]["messages"] == published["messages"].to_list()
    assert TOKEN not in caplog.text and TOKEN not in (out / "README.md").read_text()


def test_each_version_is_one_commit_named_and_tagged_for_it_and_a_failed_run_pushes_nothing(
    hub: RecordingHub, fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = _run(write_config, fake_llm, out, sample=6).summary["version"]
    second = _run(write_config, fake_llm, out, sample=9).summary["version"]
    commits = [kw for name, kw in hub.calls if name == "create_commit"]
    tags = [kw for name, kw in hub.calls if name == "create_tag"]
    assert len(commits) == 2 and [t["tag"] for t in tags] == [first, second]
    assert first in commits[0]["commit_message"] and second in commits[1]["commit_message"]
    assert [t["revision"] for t in tags] == hub.commits and tags[0]["repo_type"] == "dataset"

    # revision=VERSION reads that night's rows, whatever was pushed since
    for version, rows in ((first, 6), (second, 9)):
        night = datasets.load_dataset(str(hub.tags / version), cache_dir=str(tmp_path / "hf"))
        assert night["train"].num_rows == rows
        assert DatasetCard.load(hub.tags / version / "README.md").text.count(version) >= 1

    # a run that fails its gates (every call fails) pushes nothing, and the Hub keeps night 2
    fake_llm.status_override = 500
    failed = _run(write_config, fake_llm, out, sample=12)
    assert not failed.published and len(hub.calls) == 8  # nothing after the second tag
    assert json.loads((out / "summary.json").read_text())["version"] == second


def test_a_failed_upload_is_one_line_without_the_token(
    hub: RecordingHub, fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    hub.fail = RuntimeError(f"403 Forbidden\nfor token {TOKEN}\n  (details)")
    out = tmp_path / "out"
    with pytest.raises(writers.PublishError) as raised:
        _run(write_config, fake_llm, out)
    message = str(raised.value)
    assert "\n" not in message and TOKEN not in message
    assert REPO in message and "403 Forbidden" in message and "***" in message
    for name in ("dataset.parquet", "README.md", "summary.json", "report.md"):
        assert (out / name).is_file()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed once the socket is: connections are refused


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "hub-unreachable"])
def test_a_push_that_cannot_reach_the_hub_is_one_clear_line(
    offline: bool, fake_llm: FakeLLMServer, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = write_config(role_lms(fake_llm.base_url), sample=3, publish={"push_to_hub": REPO})
    out = tmp_path / "out"
    # the Hub is a closed port on loopback: no test reaches the network
    hub_env = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    hub_env["HF_HUB_OFFLINE"] = "1" if offline else "0"
    proc = run_cli(
        "run", "--config", str(config), "--out", str(out), env={"HF_TOKEN": TOKEN, **hub_env}
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: publish.push_to_hub {REPO}: ")
    assert "local outputs are complete" in line and TOKEN not in proc.stderr
    assert ("HF_HUB_OFFLINE" in line) is offline
    for name in ("dataset.parquet", "README.md", "summary.json"):
        assert (out / name).is_file()


def test_a_run_with_no_rows_uploads_nothing(
    hub: RecordingHub, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """`datasets` cannot load a split with no rows: the push says so instead of uploading."""
    from flows.core.config import PublishConfig
    from flows.publish.card import card_data
    from flows.publish.writers import push_to_hub, write_dataset

    cfg = load_config(write_config(role_lms("http://127.0.0.1:9/v1")), environ={})
    out = tmp_path / "empty"
    out.mkdir()
    write_dataset(out, [], cfg.publish)
    DatasetCard(f"---\n{card_data(cfg, 0).to_yaml()}\n---\n# empty\n").save(out / "README.md")
    with pytest.raises(writers.PublishError, match="no rows to publish"):
        push_to_hub(out, PublishConfig(push_to_hub=REPO))
    assert hub.calls == []
