"""DSPy Signatures, one per role and phase; each docstring is that role's instructions.

Signatures import nothing of ours: they are the declarations the modules execute and the
optimizers rewrite.
"""

from signatures.analogy import AnalogyStudentSolution, AnalogyTeacherExplanation
from signatures.debate import DebaterTurn, DebateSummary
from signatures.error_correction import StrongStudentRevision, TeacherCritique, WeakStudentAnswer
from signatures.judge import JudgeDialogue

__all__ = [
    "AnalogyStudentSolution",
    "AnalogyTeacherExplanation",
    "DebateSummary",
    "DebaterTurn",
    "JudgeDialogue",
    "StrongStudentRevision",
    "TeacherCritique",
    "WeakStudentAnswer",
]
