"""The augment flow on a Prefect test server: the same outputs as `master run`, plus artifacts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness

from conftest import role_lms
from fake_llm import FakeLLMServer


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_augment_flow_writes_outputs_and_artifacts(
    prefect_server: None,
    fake_llm: FakeLLMServer,
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client

    import flows.run
    from conftest import hashing_embedder
    from flows.augment import augment

    monkeypatch.setattr(flows.run, "minilm_embedder", lambda: hashing_embedder)
    config = write_config(role_lms(fake_llm.base_url), sample=6, run={"shard_size": 2})
    out = tmp_path / "flow-out"
    summary = augment(config_path=str(config), out=str(out))
    assert summary["lm"]["calls"] == fake_llm.request_count > 0
    assert json.loads((out / "summary.json").read_text())["dialogues"] == summary["dialogues"]
    assert sum(summary["dialogues"].values()) == 6

    async def artifact_keys() -> set[str]:
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts() if a.key}

    import asyncio

    keys = asyncio.run(artifact_keys())
    assert {"augment-report", "augment-lm-calls", "augment-summary"} <= keys
    assert {"augment-plot-counts", "augment-plot-lengths", "augment-plot-checks"} <= keys
