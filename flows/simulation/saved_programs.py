"""Versioned scenario programs: optimized prompts and demos saved under data/programs/.

A version is DSPy's own JSON state of the program (instructions and demos per predictor) with
the LM state left out: which model a role uses is the config's business, never a saved file's,
and a file that names an endpoint could redirect calls. The version id is the program's content
hash (modules.scenarios.registry.program_version), so the same optimization result
always gets the same id
and the cache sees exactly which roles' prompts changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.core.config import PROJECT_ROOT, ConfigError
from flows.core.files import write_json

if TYPE_CHECKING:
    import dspy

    from modules.scenarios.agents import AdapterName

# DSPy and the programs are imported by the functions that build or save one: a replayed run
# names its programs with version_prints and never loads DSPy.

PROGRAMS_DIR = PROJECT_ROOT / "data" / "programs"
BASELINE = "baseline"


def programs_dir(configured: str | None = None) -> Path:
    path = Path(configured) if configured else PROGRAMS_DIR
    return path if path.is_absolute() else PROJECT_ROOT / path


def program_state(program: dspy.Module) -> dict[str, Any]:
    """DSPy's state of every predictor, without the LM (see the module docstring)."""
    lms = {name: p.lm for name, p in program.named_predictors()}
    try:
        for _, predictor in program.named_predictors():
            predictor.lm = None  # our engine (cache, budget) is rebuilt from the config
        return program.dump_state()
    finally:
        for name, predictor in program.named_predictors():
            predictor.lm = lms[name]


def apply_state(program: dspy.Module, state: dict[str, Any]) -> dspy.Module:
    """Load saved instructions and demos into a program, keeping each predictor's own LM."""
    lms = {name: p.lm for name, p in program.named_predictors()}
    program.load_state({k: v for k, v in state.items() if k != "metadata"})
    for name, predictor in program.named_predictors():
        predictor.lm = lms[name]
    return program


def save_version(
    program: dspy.Module, scenario: str, meta: dict[str, Any], root: Path | None = None
) -> str:
    """Write <root>/<scenario>/<version>.json (DSPy state) and <version>.meta.json."""
    from dspy.utils.saving import get_dependency_versions

    from modules.scenarios.registry import program_version

    version = program_version(program)
    folder = (root or PROGRAMS_DIR) / scenario
    state = program_state(program)
    # the metadata block DSPy's own Module.save writes, so `program.load(path)` reads it too
    state["metadata"] = {"dependency_versions": get_dependency_versions()}
    write_json(folder / f"{version}.json", state)
    write_json(folder / f"{version}.meta.json", {**meta, "version": version, "scenario": scenario})
    return version


def load_version(
    program: dspy.Module, scenario: str, version: str, root: Path | None = None
) -> dspy.Module:
    """The scenario's program at the named version (BASELINE: as declared in signatures/)."""
    if version == BASELINE:
        return program
    path = (root or PROGRAMS_DIR) / scenario / f"{version}.json"
    if not path.is_file():
        known = ", ".join(v["version"] for v in list_versions(scenario, root)) or "none"
        raise ConfigError(
            f"scenarios.programs.{scenario}: no saved version {version!r} in {path.parent} "
            f"(saved: {known}; or use {BASELINE!r})"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        return apply_state(program, state)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a saved {scenario} program ({exc})") from None


def list_versions(scenario: str, root: Path | None = None) -> list[dict[str, Any]]:
    """Metadata of every saved version of a scenario, oldest first."""
    folder = (root or PROGRAMS_DIR) / scenario
    metas = []
    for path in sorted(folder.glob("*.meta.json")):
        try:
            metas.append(json.loads(path.read_text(encoding="utf-8")))
        except ValueError:
            continue
    return sorted(metas, key=lambda m: (m.get("date", ""), m.get("version", "")))


def configured_programs(
    lms: Mapping[str, dspy.LM],
    versions: Mapping[str, str],
    programs_root: str | None = None,
    adapters: Mapping[str, AdapterName] | None = None,
) -> dict[str, dspy.Module]:
    """The scenario programs on these LMs and adapters, at the versions the config names."""
    from modules.scenarios.registry import build_programs

    programs = build_programs(lms, adapters)
    root = programs_dir(programs_root)
    for scenario, version in versions.items():
        programs[scenario] = load_version(programs[scenario], scenario, version, root)  # type: ignore[index]
    return programs  # type: ignore[return-value]


def version_prints(
    versions: Mapping[str, str], programs_root: str | None = None
) -> dict[str, str] | None:
    """What makes each configured program what it is, without building one: a saved version is
    its file's sha256; the baseline is declared by our source and DSPy's version, which a run
    key holds anyway. None if a saved version's file is missing (building says which)."""
    root = programs_dir(programs_root)
    prints = {}
    for scenario, version in sorted(versions.items()):
        if version == BASELINE:
            prints[scenario] = BASELINE
            continue
        path = root / scenario / f"{version}.json"
        try:
            prints[scenario] = f"{version}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
        except OSError:
            return None
    return prints
