"""DSPy Modules and the LM layer they run on.

- ``modules.scenarios``: the agents, the three scenario programs, the judge, the turn guards
  and the agents' wire format (the paper-level programs);
- ``modules.lm``: role settings, the LM factory, the OpenAI-compatible and embedded engines,
  the call cache, the budget and limits, and every use of DSPy internals;
- ``modules.runtime``: the one explicit process set-up (``setup()``).

Modules never import flows or Prefect. Importing any of them only defines things.
"""
