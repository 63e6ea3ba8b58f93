"""Importing the project does nothing but define things: no environment variable set, no DSPy
adapter patched, no logging filter added. modules.runtime.setup() does all of it, explicitly
(the CLI, the flows, the benchmarks and these tests' fixtures call it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import OFFLINE_HUBS, PROJECT
from modules.runtime import ENV_DEFAULTS

HUB_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def _fresh_env() -> dict[str, str]:
    """This process ran setup() (conftest) and set the hubs offline for the tests: a child
    starts without either."""
    drop = {*ENV_DEFAULTS, *OFFLINE_HUBS, *HUB_SWITCHES}
    return {k: v for k, v in os.environ.items() if k not in drop}


PROBE = r"""
import gc, json, logging, os, pkgutil, sys, importlib
# third-party imports first: their own side effects (polars sets _RJEM_MALLOC_CONF) are not ours
import aiohttp, datasets, diskcache, dspy, httpx, numpy, orjson, polars, pydantic, yaml
before_env = dict(os.environ)
before_gc = gc.get_threshold(), sys.getswitchinterval()
import flows, modules, signatures
names = ["signatures", "modules", "flows"]
for package in (flows, modules, signatures):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        names.append(info.name)
for name in names:
    importlib.import_module(name)
import dspy.adapters.base, dspy.adapters.utils
keys = set(before_env) | set(os.environ)
changed = sorted(k for k in keys if before_env.get(k) != os.environ.get(k))
hooks = (dspy.adapters.base.Adapter.format_system_message, dspy.adapters.utils.serialize_for_json)
patched = [f"{f.__module__}.{f.__name__}" for f in hooks if not f.__module__.startswith("dspy.")]
loggers = ("dspy.clients.lm", "dspy.predict.predict")
filters = [n for n in loggers if logging.getLogger(n).filters]
same_gc = (gc.get_threshold(), sys.getswitchinterval()) == before_gc
print(json.dumps({"imported": len(names), "changed_env": changed, "patched": patched,
                  "filters": filters, "gc": same_gc}))
"""


def test_importing_every_package_changes_no_environment_and_patches_nothing() -> None:
    env = _fresh_env()
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=PROJECT, env=env,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["imported"] > 60  # every module of every package was imported
    assert found["changed_env"] == []
    assert found["patched"] == []
    assert found["filters"] == []
    assert found["gc"] is True


def test_setup_does_it_all_once() -> None:
    """...and leaves the Hugging Face hubs as the user set them: a Hub upload or a `hf:`
    source works without unsetting anything (the bundled models need no hub)."""
    probe = (
        "import os, dspy.adapters.base as b; from modules.runtime import setup; "
        "setup(); setup(); print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'], "
        "b.Adapter.format_system_message.__module__, "
        f"*(os.environ.get(k, '-') for k in {HUB_SWITCHES!r}))"
    )
    env = _fresh_env()
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJECT, env=env,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "modules.lm.dspy_internals", "-", "-"]
    assert not set(HUB_SWITCHES) & set(ENV_DEFAULTS)


#: loaded where a path needs them, never by importing the CLI or the pipeline driver
HEAVY = (
    "dspy",
    "datasets",
    "matplotlib",
    "torch",
    "sentence_transformers",
    "flows.optimization",
    "flows.runs.shards",
)


def test_the_cli_and_the_pipeline_driver_import_no_heavy_library() -> None:
    probe = (
        "import sys, json, flows.cli, flows.runs.pipeline, flows.runs.progress, "
        "flows.publish.writers, flows.publish.plots; "
        "print(json.dumps([m for m in sys.argv[1:] if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, *HEAVY], capture_output=True, text=True, cwd=PROJECT,
        env=_fresh_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_loading_jsonl_seeds_imports_no_polars(tmp_path: Path) -> None:
    """polars scans Parquet and CSV sources; a JSONL source, decontaminated against the
    bundled GSM8K test set (JSONL), is read without it (start-up, benchmarks/decisions.md)."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                for i in range(20)), encoding="utf-8")  # fmt: skip
    probe = (
        "import sys, json\n"
        "from flows.core.config import load_config\n"
        "from flows.ingest.seeds import load_seeds\n"
        "cfg = load_config(None, environ={})\n"
        "kept = len(load_seeds(cfg.seeds, [sys.argv[1]]).seeds)\n"
        "print(json.dumps([kept, 'polars' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(seeds)], capture_output=True, text=True,
        cwd=PROJECT, env=_fresh_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    kept, polars_loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert kept > 0 and polars_loaded is False
