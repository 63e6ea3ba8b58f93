"""The optimize flow: prompt-optimization experiments as Prefect tasks, for `optimize/experiment`.

The work is in flows/optimization/experiment.py (plain functions `master optimize` calls too);
this file wires one task per scenario and publishes the comparison table as an artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.core.config import SCENARIOS, MasterConfig, Scenario, load_config
from flows.optimization.experiment import compare, format_compare, optimize_lines, optimize_scenario
from modules.lm.settings import check_keys
from modules.runtime import setup


@task(name="optimize-scenario", cache_policy=NO_CACHE, task_run_name="optimize-{scenario}")
def optimize_task(cfg: MasterConfig, scenario: Scenario) -> dict[str, Any]:
    return optimize_scenario(cfg, scenario)


@task(name="compare-versions", cache_policy=NO_CACHE, task_run_name="compare-{scenario}")
def compare_task(cfg: MasterConfig, scenario: Scenario) -> list[dict[str, Any]]:
    rows = compare(cfg, scenario)
    create_table_artifact(
        table=[
            {k: v for k, v in row.items() if k != "pass_rates"}
            | {f"pass_{c}": r for c, r in row["pass_rates"].items()}
            for row in rows
        ],
        key=f"optimize-compare-{scenario.replace('_', '-')}",
        description=f"{scenario}: baseline and saved versions on the dev set",
    )
    return rows


@flow(name="optimize", log_prints=True)
def optimize(
    config_path: str | None = None,
    profile: str | None = None,
    scenario: str = "all",
    optimizer: str | None = None,
    max_calls: int | None = None,
    run_compare: bool = True,
) -> dict[str, Any]:
    """Optimize the agents of one scenario (or all), then compare every saved version."""
    setup()
    cfg = load_config(config_path, profile)
    updates: dict[str, Any] = {}
    if optimizer:
        updates["optimizer"] = optimizer
    if max_calls:
        updates["max_calls"] = max_calls
    if updates:
        cfg = cfg.model_copy(update={"optimize": cfg.optimize.model_copy(update=updates)})
    check_keys(cfg.lms, ("weak", "peer", "strong", "judge"))
    scenarios: list[Scenario] = list(SCENARIOS) if scenario == "all" else [scenario]  # type: ignore[list-item]
    results: dict[str, Any] = {}
    for name in scenarios:
        meta = optimize_task(cfg, name)
        get_run_logger().info("%s", optimize_lines(name, meta))
        results[name] = {
            "version": meta["version"],
            "metric_before": meta["metric_before"],
            "metric_after": meta["metric_after"],
            "beats_baseline": meta["beats_baseline"],
            "dev_failed": meta["dev_after"]["failed"],
        }
        if run_compare:
            rows = compare_task(cfg, name)
            create_markdown_artifact(
                markdown=f"```\n{format_compare(name, rows)}\n```",
                key=f"optimize-report-{name.replace('_', '-')}",
                description=f"{name} optimization",
            )
    return results
