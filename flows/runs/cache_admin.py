"""`master cache stats` and `master cache prune`: look after the cache folder.

The folder holds four diskcache stores: LM calls (and their slot index) at the top, whole
dialogues, and analogy partners. Values are JSON; nothing here unpickles anything.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import diskcache
import dspy

from flows.core.config import SCENARIOS, ConfigError
from flows.planning.retrieval import VECTORS
from flows.simulation.dialogue_cache import VERDICT
from flows.simulation.saved_programs import list_versions, load_version
from modules.cache.canonical import canonical_json
from modules.cache.disks import SafeJSONDisk
from modules.lm.call_cache import prompt_sha
from modules.scenarios.judge import Judge
from modules.scenarios.registry import build_programs, program_version
from signatures import JudgeDialogue


def _open(path: Path) -> diskcache.Cache:
    return diskcache.Cache(str(path), disk=SafeJSONDisk)


def _get(store: diskcache.Cache, key: Any) -> Any:
    """A value, or None when it cannot be read (damaged): prune then removes it."""
    try:
        return store.get(key)
    except (zlib.error, ValueError, UnicodeDecodeError, OSError):
        return None


def cache_stats(directory: str | Path) -> dict[str, Any]:
    root = Path(directory)
    stats: dict[str, Any] = {"dir": str(root)}
    with _open(root) as calls:
        by_role: Counter[str] = Counter()
        by_model: Counter[str] = Counter()
        times: list[float] = []
        slots = 0
        for key in calls.iterkeys():
            if str(key).startswith("slot:"):
                slots += 1
                continue
            value = _get(calls, key)
            if isinstance(value, dict):
                by_role[str(value.get("role"))] += 1
                by_model[str(value.get("model"))] += 1
                times.append(float(value.get("ts", 0)))
        stats["calls"] = {
            "entries": sum(by_role.values()),
            "slots": slots,
            "bytes": calls.volume(),
            "by_role": dict(sorted(by_role.items())),
            "by_model": dict(sorted(by_model.items())),
            "oldest": min(times) if times else None,
            "newest": max(times) if times else None,
        }
    for name in ("dialogues", "retrieval", VECTORS):
        with _open(root / name) as store:
            stats[name] = {"entries": len(store), "bytes": store.volume()}
            if name == "dialogues":  # verdicts live beside the dialogues they judge
                verdicts = sum(1 for k in store.iterkeys() if str(k).startswith(VERDICT))
                stats[name]["entries"] -= verdicts
                stats["verdicts"] = {"entries": verdicts}
    runs = _stored_runs(root)
    stats["runs"] = {  # hard links to the outputs: bytes shared with the output folders
        "entries": len(runs),
        "bytes": sum(f.stat().st_size for r in runs for f in r.rglob("*") if f.is_file()),
    }
    return stats


def _stored_runs(root: Path) -> list[Path]:
    """The run cache's entries (flows/runs/run_cache.py), not its staging folders."""
    folder = root / "runs"
    return (
        [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        if (folder.is_dir())
        else []
    )


def known_programs() -> list[dspy.Module]:
    """The baseline programs and every saved version under data/programs/: a cache entry one
    of them would ask for is in use (a config may switch to a saved version at any time)."""
    programs = list(build_programs({}).values())
    for scenario in SCENARIOS:
        for meta in list_versions(scenario):
            program = build_programs({})[scenario]
            try:
                programs.append(load_version(program, scenario, str(meta.get("version"))))
            except ConfigError:
                continue
    return programs


def current_prompt_shas() -> set[str]:
    """The prompts the known programs and the judge send (callcache.prompt_sha): an entry
    stored with another one no current program would ask for."""
    predictors = [p for prog in known_programs() for _, p in prog.named_predictors()]
    predictors += [p for _, p in Judge().named_predictors()]
    return {prompt_sha(p) for p in predictors}


def current_instruction_shas() -> set[str]:
    """The ChatAdapter system-prompt hashes of the known programs, hashed as `slot_facts`
    does: how entries written before prompt_sha was stored are told apart."""
    adapter = dspy.ChatAdapter()
    signatures = [p.signature for prog in known_programs() for _, p in prog.named_predictors()] + [
        JudgeDialogue
    ]
    shas = set()
    for sig in signatures:
        inputs = {name: "x" for name in sig.input_fields}
        system = adapter.format(sig, demos=[], inputs=inputs)[0]["content"]
        shas.add(hashlib.sha256(canonical_json(system).encode()).hexdigest()[:16])
    return shas


def prune(
    directory: str | Path, older_than_days: float | None = None, unused: bool = False
) -> dict[str, int]:
    """Delete entries older than N days, and/or those no current program would ask for."""
    root = Path(directory)
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    shas = current_instruction_shas() if unused else set()
    prompts = current_prompt_shas() if unused else set()
    versions = {program_version(p) for p in known_programs()} if unused else set()
    removed = {"calls": 0, "slots": 0, "dialogues": 0, "verdicts": 0, "runs": 0}

    def stale(value: Any, field: str, current: set[str]) -> bool:
        if not isinstance(value, dict):
            return True
        if cutoff is not None and float(value.get("ts", 0)) < cutoff:
            return True
        return unused and value.get(field) not in current

    with _open(root) as calls:
        for key in list(calls.iterkeys()):
            if str(key).startswith("slot:"):
                continue
            value = _get(calls, key)
            if isinstance(value, dict) and value.get("prompt_sha"):
                unused_call = stale(value, "prompt_sha", prompts)
            else:
                unused_call = stale(value, "system_sha", shas)
            if unused_call:
                calls.delete(key)
                removed["calls"] += 1
        for key in list(calls.iterkeys()):
            if str(key).startswith("slot:"):
                value = _get(calls, key)
                if not isinstance(value, dict) or value.get("call") not in calls:
                    calls.delete(key)
                    removed["slots"] += 1
    with _open(root / "dialogues") as store:
        for key in list(store.iterkeys()):
            value = _get(store, key)
            body = value.get("body") if isinstance(value, dict) else None
            if stale(body, "program_version", versions):
                store.delete(key)
                removed["verdicts" if str(key).startswith(VERDICT) else "dialogues"] += 1
    for run in _stored_runs(root):  # stored runs: by age (their count is capped when stored)
        if cutoff is not None and run.stat().st_mtime < cutoff:
            shutil.rmtree(run, ignore_errors=True)
            removed["runs"] += 1
    return removed
