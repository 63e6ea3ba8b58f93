"""Render the prompts each role receives in one dialogue, without calling any model.

Each agent's predictor runs on a DSPy DummyLM that answers with a placeholder, so every
prompt is rendered by the real adapter from the real Signature, demos included, exactly as a
model would receive it. Users review these before paying for a run.
"""

from __future__ import annotations

from typing import Any

from dspy.utils import DummyLM

from flows.core.config import MasterConfig, Scenario
from flows.core.records import Seed
from flows.planning.assign import assign_scenario, debate_rounds
from flows.planning.jobs import Job
from flows.simulation.simulate import run_program
from modules.scenarios.agents import Agent
from modules.scenarios.registry import build_programs, role_adapters


def render_prompts(cfg: MasterConfig, job: Job) -> list[dict[str, Any]]:
    """The messages of every LM call of one dialogue, in order, with speaker and role."""
    program = build_programs({}, role_adapters(cfg.lms))[job.scenario]
    agents = [m for _, m in program.named_sub_modules() if isinstance(m, Agent)]
    for agent in agents:
        placeholder = f"<{agent.speaker} answers here>"
        agent.predict.lm = DummyLM([{agent.output_field: placeholder}] * 8)
    run_program(program, job)
    calls = [
        (entry["timestamp"], agent, entry["messages"])
        for agent in agents
        for entry in agent.predict.lm.history
    ]
    calls.sort(key=lambda c: c[0])
    seen: set[int] = set()
    rendered = []
    for _, agent, messages in calls:
        key = id(messages)
        if key in seen:
            continue
        seen.add(key)
        rendered.append({"speaker": agent.speaker, "role": agent.role, "messages": messages})
    return rendered


def example_job(cfg: MasterConfig, seeds: list[Seed], scenario: Scenario) -> Job:
    """The first seed assigned to the scenario (or the first seed), as a job of that scenario."""
    chosen = next(
        (s for s in seeds if assign_scenario(s.id, cfg.scenarios.proportions) == scenario),
        seeds[0],
    )
    similar = next((s for s in seeds if s.domain == chosen.domain and s.id != chosen.id), None)
    return Job(
        seed=chosen,
        scenario=scenario,
        rounds=debate_rounds(chosen.id, cfg.scenarios.debate_rounds),
        similar=similar,
    )


def format_prompts(rendered: list[dict[str, Any]]) -> str:
    parts = []
    for i, call in enumerate(rendered, start=1):
        parts.append(f"=== call {i}: {call['speaker']} (role {call['role']}) ===")
        for message in call["messages"]:
            parts.append(f"--- {message['role']} ---\n{message['content']}")
        parts.append("")
    return "\n".join(parts)
