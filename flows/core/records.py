"""The data model of DESIGN.md section 3: seeds in, dialogues out.

Plain pydantic models so every row can be validated against the published schema, and so
that the data-plane functions stay pure and testable without Prefect.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flows.core.config import Domain, Scenario


def normalise_text(text: str) -> str:
    """NFKC plus collapsed whitespace: what makes two renderings of one text hash the same.

    str.split() collapses exactly the whitespace `\\s` does, in C; NFKC is skipped for ASCII,
    which it leaves unchanged (this runs three times per row read)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def seed_id(source: str, question: str, reference: str) -> str:
    """Content hash, identical on every machine and run for the same normalised content."""
    payload = "\x1f".join(normalise_text(part) for part in (source, question, reference))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:20]


class Seed(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    source: str
    domain: Domain
    question: str
    reference: str
    meta: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def create(
        cls,
        source: str,
        domain: Domain,
        question: str,
        reference: str,
        meta: dict[str, Any] | None = None,
    ) -> Seed:
        return cls(
            id=seed_id(source, question, reference),
            source=source,
            domain=domain,
            question=question.strip(),
            reference=reference.strip(),
            meta=meta or {},
        )


Speaker = Literal[
    "question", "teacher", "weak_student", "student_a", "student_b", "student_c", "strong_student"
]


class Turn(BaseModel):
    """One utterance, with the agent that produced it (None for fixed text such as the question)."""

    speaker: Speaker
    role: str | None
    text: str
    model: str | None = None
    temperature: float | None = None
    finish_reason: str | None = None


class ShareGPTMessage(BaseModel):
    from_: Literal["system", "human", "gpt"] = Field(alias="from")
    value: str

    model_config = ConfigDict(populate_by_name=True)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Dialogue(BaseModel):
    seed_id: str
    source: str
    domain: Domain
    scenario: Scenario
    turns: list[Turn]
    conversations: list[ShareGPTMessage]
    messages: list[ChatMessage]
    provenance: dict[str, Any]
    quality: dict[str, Any] = Field(default_factory=dict)


class Reject(BaseModel):
    """A row or dialogue that did not make it, with where it came from and why."""

    stage: str
    reason: str
    source: str | None = None
    location: str | None = None
    seed_id: str | None = None
    detail: str | None = None
    checks: str | None = None  # comma-separated failed hard checks (stage "quality")
