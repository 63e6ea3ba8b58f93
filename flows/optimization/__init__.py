"""Prompt-optimization experiments (BootstrapFewShot, MIPROv2, GEPA) and the metric built from the
checks."""
