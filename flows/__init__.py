"""Prefect flows and the data-plane code they call; flows only wire steps together.

Importing `modules` first sets the offline environment (no hub, no telemetry, local LiteLLM
cost map) before Prefect, LiteLLM or the hub clients are imported anywhere below.
"""

import modules  # noqa: F401
