"""The LM layer: role settings become ``dspy.LM`` objects whose engines (an OpenAI-compatible
HTTP engine, LiteLLM, or the embedded SmolLM2) sit behind the content-addressed call cache, the
budget and the per-role concurrency limits. DSPy internals are used in dspy_internals.py only."""
