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
    assert "5 kept, 0 broken" in done.stdout


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
