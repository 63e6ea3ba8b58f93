"""axolotl: the dataset entry that trains on messages.jsonl. axolotl reads a per-message
training flag only when the config names its field (`message_field_training`), so the card
gives the whole entry."""

from __future__ import annotations

import yaml


def config(masking: bool) -> str:
    """The `datasets:` entry of an axolotl config for messages.jsonl: with `masking`, a
    message's `weight` (0 or 1) decides whether it is trained; unweighted (user) messages
    follow roles_to_train."""
    entry: dict[str, object] = {
        "path": "messages.jsonl",
        "ds_type": "json",
        "type": "chat_template",
        "field_messages": "messages",
        "message_property_mappings": {"role": "role", "content": "content"},
        "roles_to_train": ["assistant"],
        **({"message_field_training": "weight"} if masking else {}),
    }
    return yaml.safe_dump({"datasets": [entry]}, sort_keys=False)
