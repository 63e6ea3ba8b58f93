"""The run configuration: one YAML file, an optional profile, environment overrides.

Configuration is data. It is read in three layers, later wins:

1. the config file (default ``data/config.yaml``, every key documented there);
2. profiles from ``data/profiles/NAME.yaml`` (``--profile A,B`` or ``MASTER_PROFILE=A,B``), for
   ready setups such as the paper's Qwen2.5 agents. A profile may start with
   ``include: [OTHER, ...]``: those are applied first, in order, then the profile itself. Each
   profile is applied once, where it first appears, left to right;
3. environment variables ``MASTER__SECTION__KEY=value`` (double underscores separate keys,
   values are parsed as YAML scalars), e.g. ``MASTER__LMS__WEAK__TEMPERATURE=0.9``.

Every layer merges into the one before it the same way: mappings key by key, while a list or
a scalar replaces the earlier value whole (a profile that sets `eval_sets` names all of them).

Errors name the key and where it came from (the file, or the variable), in one line each:
a user mistake never ends in a traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modules.lm.settings import RoleLMs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "data" / "config.yaml"
PROFILES_DIR = PROJECT_ROOT / "data" / "profiles"
ENV_PREFIX = "MASTER__"

Domain = Literal["math", "code", "general"]
Scenario = Literal["error_correction", "debate", "analogy"]
SCENARIOS: tuple[Scenario, ...] = ("error_correction", "debate", "analogy")


#: The seed formats a source may have, and the fields each reads (flows/ingest/field_mapping.py).
SourceFormat = Literal["question_answer", "alpaca", "self_instruct", "sharegpt"]

DEFAULT_FIELDS: dict[str, dict[str, str]] = {
    # title: an optional column put before the question (ProcQA's StackOverflow titles); the
    # default name matches no column, so only a source that maps it reads one
    "question_answer": {"question": "question", "answer": "answer", "title": ""},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "self_instruct": {"instruction": "instruction", "instances": "instances"},
    "sharegpt": {"conversations": "conversations"},
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "question_answer": ("question", "answer"),
    "alpaca": ("instruction", "output"),
    "self_instruct": ("instruction", "instances"),
    "sharegpt": ("conversations",),
}


class ConfigError(Exception):
    """A user mistake in the configuration; the message is the whole story, one line a problem."""


class DataRef(BaseModel):
    """Where rows come from (a local file or a Hugging Face dataset) and how fields map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(default=None, description="local JSONL, JSON array, Parquet or CSV")
    hf: str | None = Field(default=None, description="Hugging Face dataset id (streamed)")
    hf_config: str | None = None
    split: str = "train"
    format: SourceFormat = "question_answer"
    fields: dict[str, str] = Field(
        default_factory=dict, description="column names, e.g. {question: prompt}"
    )
    name: str | None = Field(default=None, description="label; defaults to the file stem or id")

    @model_validator(mode="after")
    def _one_origin(self) -> DataRef:
        if (self.path is None) == (self.hf is None):
            raise ValueError("give exactly one of `path` or `hf`")
        unknown = set(self.fields) - set(DEFAULT_FIELDS[self.format])
        if unknown:
            raise ValueError(
                f"fields {sorted(unknown)} unknown for format {self.format} "
                f"(known: {sorted(DEFAULT_FIELDS[self.format])})"
            )
        return self

    @cached_property
    def label(self) -> str:
        if self.name:
            return self.name
        return Path(self.path).stem if self.path else str(self.hf).rsplit("/", 1)[-1]


class SourceConfig(DataRef):
    """One seed source: a DataRef plus the domain it feeds and how many rows to take."""

    domain: Domain
    sample: int | None = Field(default=None, gt=0, description="rows to take from this source")


class DedupeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exact: bool = True
    near: bool = True
    threshold: float = Field(default=0.7, gt=0.0, le=1.0, description="MinHash Jaccard")
    num_perm: int = Field(default=64, ge=16, le=512)
    ngram: int = Field(default=5, ge=2, le=8, description="character shingle length")
    min_words: int = Field(
        default=8, ge=1, description="shorter questions are only deduplicated exactly"
    )


class DecontaminationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    eval_sets: list[DataRef] = Field(default_factory=list)
    ngram: int = Field(default=13, ge=4, le=64, description="shared word n-gram length")


class SeedsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[SourceConfig] = Field(min_length=1)
    sample: int | None = Field(default=None, gt=0, description="total seeds, split over sources")
    random_seed: int = 0
    max_chars: int = Field(default=20_000, gt=0, description="longer questions are rejected")
    max_row_bytes: int = Field(default=1_000_000, gt=0, description="larger raw rows rejected")
    oversample: float = Field(
        default=1.2, ge=1.0, le=10.0, description="sampled reserve for dedupe losses"
    )
    retrieval_pool: int = Field(default=20_000, gt=0, description="analogy pool size cap")
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)


class ScenarioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    proportions: dict[Scenario, float] = Field(
        default_factory=lambda: {"error_correction": 1.0, "debate": 1.0, "analogy": 1.0}
    )
    debate_rounds: Literal["auto", 1, 2] = "auto"
    retrieval_top_k: int = Field(default=5, gt=0)
    debate_mapping: Literal["alternate", "final_only"] = "alternate"
    analogy_pool: Literal["seeds", "reservoir"] = Field(
        default="reservoir",
        description="seeds: similar questions come from this run's non-analogy seeds (the "
        "paper); reservoir: from a sample of every loaded row",
    )
    programs: dict[Scenario, str] = Field(
        default_factory=dict, description="saved program version per scenario (data/programs/)"
    )

    @model_validator(mode="after")
    def _some_weight(self) -> ScenarioConfig:
        if sum(self.proportions.values()) <= 0 or any(v < 0 for v in self.proportions.values()):
            raise ValueError("proportions must be non-negative and not all zero")
        return self


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: str = ".master/cache"
    enabled: bool = True
    replay_runs: bool = Field(
        default=True,
        description="a run whose inputs are all unchanged restores its stored outputs",
    )
    keep_runs: int = Field(default=3, ge=1, description="stored runs kept (most recent first)")


class BudgetConfig(BaseModel):
    """Caps on what one run may spend on models; cache hits are free. Unset = no cap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_calls: int | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, gt=0)

    @property
    def capped(self) -> bool:
        return any(v is not None for v in (self.max_calls, self.max_tokens, self.max_cost_usd))


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    out: str = "out/run"
    concurrency: int = Field(default=16, gt=0, description="dialogues in flight at once")
    shard_size: int = Field(default=1000, gt=0, description="seeds per simulation task")
    task_runner: Literal["thread", "dask"] = Field(
        default="thread", description="where the flow runs its shards: threads, or Dask"
    )
    dask_address: str | None = Field(
        default=None, description="scheduler, e.g. tcp://10.0.0.5:8786; None = a local cluster"
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    breaker_failures: int = Field(
        default=20, ge=0, description="dialogues failing in a row that stop the run (0: never)"
    )


STRUCTURE_CHECKS = (
    "empty",
    "role_leakage",
    "echo",
    "language",
    "length",
    "repetition",
    "truncated",
)
INTENT_CHECKS = ("weak_flawed", "answer_hidden", "no_calculation")
CHECKS = ("fidelity", "judge", *STRUCTURE_CHECKS, *INTENT_CHECKS)
CHECK_GROUPS: dict[str, tuple[str, ...]] = {"structure": STRUCTURE_CHECKS, "intent": INTENT_CHECKS}
CheckName = Literal[
    "fidelity",
    "judge",
    "structure",
    "intent",
    "empty",
    "role_leakage",
    "echo",
    "language",
    "length",
    "repetition",
    "truncated",
    "weak_flawed",
    "answer_hidden",
    "no_calculation",
]


class QualityConfig(BaseModel):
    """Which checks run, and which of them drop a dialogue (the others only flag it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    judge: bool = True
    hard: list[CheckName] = Field(
        default_factory=lambda: [
            "fidelity",
            "judge",
            "structure",
            "answer_hidden",
            "no_calculation",
        ]
    )
    judge_min_score: int = Field(default=3, ge=1, le=5)
    unjudged: Literal["reject", "keep"] = Field(
        default="reject",
        description="a dialogue whose judge reply never parsed: reject fails the judge check "
        "(dropped when the judge is hard, flagged otherwise); keep leaves it unjudged",
    )
    min_turn_chars: int = Field(default=2, ge=1)
    max_turn_tokens: int = Field(default=2048, gt=0)
    repetition_ngram: int = Field(default=4, ge=2, le=12)
    repetition_max: float = Field(default=0.5, gt=0.0, le=1.0)
    echo_share: float = Field(
        default=0.9,
        gt=0.5,
        le=1.0,
        description="a turn sharing this share of its words with an earlier turn of another "
        "speaker echoes it (the question's words left out)",
    )
    english_min: float = Field(default=0.8, gt=0.0, le=1.0)
    reveal_ngram: int = Field(default=12, ge=4, le=64)

    def hard_checks(self) -> frozenset[str]:
        """The hard list with group names expanded to their checks."""
        return frozenset(c for name in self.hard for c in CHECK_GROUPS.get(name, (name,)))


class MergeConfig(BaseModel):
    """How dialogues become the published dataset (the paper: they replace their seeds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["replace", "mix"] = "replace"
    originals_per_dialogue: float = Field(default=1.0, ge=0.0)
    backfill: Literal["none", "resimulate", "original"] = Field(
        default="none",
        description="seeds without an accepted dialogue: resimulate further seeds until each "
        "source has its quota of rows, or publish their original question/answer",
    )
    replace_with_original: list[Scenario] = Field(
        default_factory=list,
        description="scenarios whose seeds are published as their original QA (ablations)",
    )


class GatesConfig(BaseModel):
    """What a run must show before it replaces the published version (flows/publish/gates.py).
    A gate set to null is not checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_failed_share: float | None = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="share of the run's seeds whose dialogue failed to generate (an LM call "
        "failed, the circuit breaker stopped it, no analogy partner)",
    )
    min_rows_vs_previous: float | None = Field(
        default=0.9,
        ge=0.0,
        description="rows as a share of the previous version's, scaled down when the seed set "
        "shrank",
    )
    max_accepted_drop: float | None = Field(
        default=0.10,
        ge=0.0,
        le=1.0,
        description="how far the accepted share may fall below the previous version's",
    )
    min_rows: int | None = Field(default=1, ge=0, description="rows the version must have")


class PublishConfig(BaseModel):
    """Where the dataset goes: versions in the output folder, a `datasets` folder and,
    optionally, the Hugging Face Hub."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep_versions: int = Field(
        default=7, ge=1, description="published versions kept in the output folder (newest)"
    )
    gates: GatesConfig = Field(default_factory=GatesConfig)
    force: bool = Field(
        default=False, description="publish even when a gate fails (`master run --force`)"
    )

    name: str = Field(default="master_augmented", pattern=r"^[A-Za-z0-9_.-]+$")
    save_to_disk: bool = True
    push_to_hub: str | None = Field(default=None, description="repo id, e.g. org/dataset")
    private: bool = True
    token_env: str = Field(default="HF_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    flawed_turns: Literal["train", "mask"] = Field(
        default="train",
        description="mask: every training file leaves the deliberately imperfect assistant "
        "turns (the weak student's first answer, debaters A and B) out of the loss: weight 0 "
        "in messages.jsonl and dataset.parquet, a row per trained turn for LLaMA-Factory "
        "(mask_history) and TRL (prompt/completion)",
    )
    over_cutoff: Literal["keep", "drop"] = Field(
        default="keep",
        description="LLaMA-Factory rows longer than the recipe's cutoff_len: keep (and warn) "
        "or leave out of llamafactory.jsonl",
    )
    license: str = Field(default="other", description="the card's Hub licence id")
    license_name: str = Field(
        default="seed-licences",
        pattern=r"^[a-z0-9][a-z0-9.-]*$",
        description="with license `other`: the licence's name on the Hub",
    )
    license_link: str = Field(
        default="README.md#licence",
        description="with license `other`: where the licence is stated (a URL or a file of "
        "the repo; by default the card's Licence section, which lists the seed sources)",
    )


class OptimizeConfig(BaseModel):
    """Prompt-optimization experiments (`master optimize`): optimizer, data split, budget."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    optimizer: Literal["bootstrap_few_shot", "mipro_v2", "gepa"] = "bootstrap_few_shot"
    settings: dict[str, Any] = Field(default_factory=dict, description="passed to the optimizer")
    train_size: int = Field(default=8, gt=0)
    dev_size: int = Field(default=8, gt=0)
    split_seed: int = 0
    max_calls: int = Field(default=2000, gt=0, description="LM calls the experiment may make")
    agents: list[str] = Field(
        default_factory=list, description="agents to optimize (e.g. teacher); empty = all"
    )
    judge: bool = False
    programs_dir: str = "data/programs"


class MasterConfig(BaseModel):
    """The whole configuration; see data/config.yaml for every key with its documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lms: RoleLMs
    seeds: SeedsConfig
    scenarios: ScenarioConfig = Field(default_factory=ScenarioConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)

    def fingerprint(self) -> str:
        """Canonical-JSON hash of what shapes the data (not where it is written)."""
        data = self.model_dump(
            mode="json", exclude={"run": True, "cache": True, "publish": True, "optimize": True}
        )
        for role in data["lms"].values():
            for key in ("timeout_s", "max_concurrency"):  # how, not what, is asked
                role.pop(key, None)
        canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Turn MASTER__A__B=value into {"a": {"b": value}}; also say which variable set each key."""
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another MASTER__ variable")
        node[parts[-1]] = value
        origin[".".join(parts)] = name
    return tree, origin


def _format_errors(exc: ValidationError, source: str, env_origin: dict[str, str]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        where = env_origin.get(key, source)
        got = ""
        if err["type"] not in {"missing", "extra_forbidden"} and "input" in err:
            got = f" (got {err['input']!r})"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {key}: {msg}{got}")
    return "\n".join(lines)


def _profile_names(spec: str | list[str] | None) -> list[str]:
    """`a,b`, or a list of such, as the profile names in order."""
    specs = [spec] if isinstance(spec, str) else list(spec or [])
    return [name.strip() for part in specs for name in part.split(",") if name.strip()]


def _expand_profile(name: str, layers: dict[str, dict[str, Any]], chain: tuple[str, ...]) -> None:
    """Add a profile's includes, then the profile, to `layers` (insertion-ordered, once each)."""
    if name in chain:
        raise ConfigError(f"profile {name!r}: includes itself ({' -> '.join([*chain, name])})")
    if name in layers:
        return
    path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))) or "none"
        where = f" (included by {chain[-1]!r})" if chain else ""
        raise ConfigError(f"profile {name!r}{where}: no {path} (known profiles: {known})")
    body = _read_yaml(path)
    includes = body.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include must be a list of profile names")
    for included in includes:
        _expand_profile(included, layers, (*chain, name))
    layers[name] = body


def load_config(
    path: str | Path | None = None,
    profile: str | list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> MasterConfig:
    """Read, merge and validate the configuration, raising ConfigError with one line a problem."""
    env = dict(os.environ if environ is None else environ)
    cfg_path = Path(path) if path else DEFAULT_CONFIG
    data = _read_yaml(cfg_path)
    source = str(cfg_path)
    names = _profile_names(profile or env.get("MASTER_PROFILE"))
    layers: dict[str, dict[str, Any]] = {}
    for name in names:
        _expand_profile(name, layers, ())
    for layer in layers.values():
        data = _deep_merge(data, layer)
    if layers:
        source = f"{cfg_path} (+ profile {' + '.join(layers)})"
    overrides, origin = _env_overrides(env)
    data = _deep_merge(data, overrides)
    try:
        return MasterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, origin)) from None
