"""The scenario programs and the judge, built from a run's role settings; a program's version.

Adding a scenario: a Signature per role and phase in signatures/, a ``Scripted`` program here
beside the others, and an entry in ``PROGRAMS`` (and its roles in flows/planning/jobs.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import dspy

from modules.lm.settings import Role, RoleLMs
from modules.scenarios.agents import AdapterName
from modules.scenarios.analogy import Analogy
from modules.scenarios.debate import Debate
from modules.scenarios.error_correction import ErrorCorrection
from modules.scenarios.judge import Judge

PROGRAMS: dict[str, type[dspy.Module]] = {
    "error_correction": ErrorCorrection,
    "debate": Debate,
    "analogy": Analogy,
}


def build_programs(
    lms: Mapping[str, dspy.LM], adapters: Mapping[str, AdapterName] | None = None
) -> dict[str, dspy.Module]:
    """Every scenario program on these role LMs (absent roles: DSPy's configured LM)."""
    return {name: program(lms, adapters) for name, program in PROGRAMS.items()}


def role_adapters(lms: RoleLMs) -> dict[Role, AdapterName]:
    """How each role's agents are prompted (LMSettings.adapter)."""
    return {role: settings.adapter for role, settings in lms.items()}


def build_judge(lms: RoleLMs, lm: dspy.LM | None) -> Judge:
    """The verifier on the judge role, with structured output when its endpoint honours it
    (the embedded model always constrains decoding to the schema)."""
    settings = lms.for_role("judge")
    return Judge(lm, structured_output=bool(settings.structured_output or settings.is_embedded))


def program_version(program: dspy.Module) -> str:
    """Hash of what the program says to the models: instructions, fields and demos."""
    state = {
        name: {
            "instructions": p.signature.instructions,
            "fields": list(p.signature.fields),
            "demos": [dict(d) for d in p.demos],
        }
        for name, p in program.named_predictors()
    }
    canon = json.dumps(state, sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]
