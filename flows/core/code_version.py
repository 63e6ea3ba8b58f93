"""Fingerprints of our own source, for caches whose values depend on code and not only data.

A stored verdict or a stored run is only as valid as the code that produced it. A version
constant someone must remember to bump is a bug waiting to happen; hashing the modules'
source is automatic, costs a few milliseconds once per process, and errs on the safe side
(a comment edit recomputes, a logic change can never be served stale).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path


@cache
def source_fingerprint(*module_names: str) -> str:
    """sha256 over the named modules' source files (a package: every .py file below it).
    The modules are found, not imported (a replayed run fingerprints signatures/ without
    loading DSPy)."""
    digest = hashlib.sha256()
    for name in sorted(module_names):
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin if spec and spec.origin else "")
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for path in files:
            digest.update(str(path.relative_to(origin.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
