"""DSPy Modules: the agents, the three scenario programs, and the LM layer they run on.

Modules never import Prefect or anything from flows/. Importing this package first sets the
offline hygiene the LM stack needs (before LiteLLM or the hub clients are imported): no cost-map
download, no hub look-ups, no telemetry; and it raises glibc's heap trim threshold
(modules/malloc_tuning.py: diskcache's zlib calls otherwise fault their memory in every time).
"""

import os

from modules.malloc_tuning import keep_heap_top

for _name, _value in {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_name, _value)

keep_heap_top()
