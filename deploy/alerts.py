"""Create the nightly-failure automation of deploy/alerts.yaml on a Prefect server.

    PREFECT_API_URL=http://HOST:4200/api MASTER_ALERT_WEBHOOK_URL=https://... \
        .venv/bin/python deploy/alerts.py

Saves the webhook as a Prefect Webhook block (`master-alert-webhook`, overwritten), puts its id
into the automation, and replaces any automation of the same name, so running it again changes
nothing but the URL. `make serve` runs it when MASTER_ALERT_WEBHOOK_URL is set. The URL is
the only secret here: it stays in the block, never in a log line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

SPEC = Path(__file__).with_name("alerts.yaml")
BLOCK = "master-alert-webhook"
URL_ENV = "MASTER_ALERT_WEBHOOK_URL"


def main() -> int:
    url = os.environ.get(URL_ENV)
    if not url:
        print(f"error: {URL_ENV} is not set (the URL the alert is POSTed to)", file=sys.stderr)
        return 2
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook

    block_id = Webhook(url=url, method="POST").save(BLOCK, overwrite=True)
    text = SPEC.read_text(encoding="utf-8").replace("${WEBHOOK_BLOCK_ID}", str(block_id))
    spec = yaml.safe_load(text)
    try:
        Automation.read(name=spec["name"]).delete()
    except ValueError:  # none of that name yet
        pass
    created = Automation.model_validate(spec).create()
    print(f"automation {created.name} ({created.id}): a failed nightly run POSTs to block {BLOCK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
