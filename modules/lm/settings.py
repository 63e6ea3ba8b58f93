"""LM settings per role: pure data, validated by pydantic.

These models live in ``modules`` (not ``flows``) because the LM layer is built from them and
modules never import flows. The full run configuration in ``flows.core.config`` embeds them.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["weak", "peer", "strong", "judge"]
ROLES: tuple[Role, ...] = ("weak", "peer", "strong", "judge")

#: The model id that selects the in-process SmolLM2-135M-Instruct (llama.cpp).
EMBEDDED_MODEL = "embedded/smollm2-135m-instruct"
NOTICE = (
    "Using the embedded SmolLM2-135M-Instruct model: it demonstrates the pipeline end to end, "
    "but its dialogues are poor. For useful data, point the roles at a real endpoint "
    "(see data/profiles/paper.yaml)."
)

#: How the embedded engine decodes besides a role's temperature and max_tokens. Without a
#: repeat penalty (llama-cpp-python's chat default is 1.0) the 135M model falls into loops
#: ("The Lion King, The Lion King, ...") until its token limit; Ollama's default is 1.1, and
#: 1.15 broke the loops of the bundled demo. Part of the embedded model's identity: it is in
#: the fingerprint (dialogue cache) and in every call key (call cache) of an embedded role.
EMBEDDED_DECODING: dict[str, float] = {"repeat_penalty": 1.15}

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LMSettings(BaseModel):
    """How one role talks to its model.

    The key itself never appears here: only the name of the environment variable holding it,
    so a config file, a Prefect parameter or a dataset card can never leak it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1, description="LiteLLM model id, or 'embedded/...' for SmolLM2")
    api_base: str | tuple[str, ...] | None = Field(
        default=None,
        description="OpenAI-compatible endpoint URL, or a list of replicas serving the same "
        "model: calls are balanced over them, with failover (modules/lm/pool.py)",
    )
    api_key_env: str | None = Field(
        default=None, description="name of the environment variable that holds the API key"
    )
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, gt=0, le=32768)
    timeout_s: float = Field(default=120.0, gt=0, description="per-call timeout")
    price_in_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per 1M input tokens"
    )
    price_out_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per 1M output tokens"
    )
    max_concurrency: int | None = Field(
        default=None, gt=0, description="calls of this role in flight at once (None: no cap)"
    )
    adapter: Literal["turn", "chat"] = Field(
        default="turn",
        description="how the role's agents are prompted: turn (the paper's chat transport, the "
        "whole reply is the turn) or chat (DSPy's ChatAdapter field markers, for comparison)",
    )
    structured_output: Literal["json_schema", "json_object"] | None = Field(
        default=None,
        description="the endpoint constrains replies to a JSON schema: json_schema (OpenAI's "
        "response_format, vLLM, SGLang, llama.cpp's llama-server) or json_object (a schema "
        "inside {type: json_object}, llama-cpp-python's server); the judge then uses it",
    )

    @field_validator("api_key_env")
    @classmethod
    def _names_a_variable(cls, value: str | None) -> str | None:
        """Refuse anything that is not a variable name, so a pasted key is caught, not stored."""
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(
                "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key"
            )
        return value

    @field_validator("api_base")
    @classmethod
    def _replicas(cls, value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        if isinstance(value, tuple):
            if not value:
                raise ValueError("the list of replicas is empty (give at least one URL)")
            if any(not v.strip() for v in value):
                raise ValueError("a replica URL is empty")
            seen = [v.rstrip("/") for v in value]
            twice = sorted({v for v in seen if seen.count(v) > 1})
            if twice:
                raise ValueError(f"replica listed twice: {', '.join(twice)}")
        return value

    @property
    def replicas(self) -> tuple[str, ...]:
        """The api_base URLs, one or several; empty for the provider's default."""
        if not self.api_base:
            return ()
        return (self.api_base,) if isinstance(self.api_base, str) else self.api_base

    @property
    def is_embedded(self) -> bool:
        return self.model.startswith("embedded/")

    def fingerprint(self) -> dict[str, object]:
        """What changes a model's answers; timeouts and prices deliberately do not count."""
        found: dict[str, object] = {
            "model": self.model,
            "api_base": self.api_base,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "adapter": self.adapter,
            "structured_output": self.structured_output,
        }
        if self.is_embedded:
            found["decoding"] = dict(EMBEDDED_DECODING)
        return found


class RoleLMs(BaseModel):
    """One LM per role; an unknown role is an error, not a silently ignored key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weak: LMSettings
    peer: LMSettings
    strong: LMSettings
    judge: LMSettings

    def for_role(self, role: Role) -> LMSettings:
        return getattr(self, role)

    def items(self) -> list[tuple[Role, LMSettings]]:
        return [(role, self.for_role(role)) for role in ROLES]


class LMConfigError(Exception):
    """A role's LM cannot be built (for example its key variable is unset): one clear line."""


def check_keys(lms: RoleLMs, roles: tuple[Role, ...]) -> None:
    """Fail before any work if a role's key variable is unset, not minutes into a run."""
    for role in roles:
        settings = lms.for_role(role)
        if settings.api_key_env and not os.environ.get(settings.api_key_env):
            raise LMConfigError(
                f"role {role}: environment variable {settings.api_key_env} is not set "
                f"(it must hold the API key for {settings.model})"
            )
