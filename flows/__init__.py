"""The pipeline's stages and its entry points.

Entry points at the top: cli.py (`master`, the only module that prints), augment.py and
optimize.py (the Prefect flows, the only modules that import Prefect). Below them, one package
per stage, importing downwards only (pyproject.toml's import-linter contracts):

    commands      back-ends of `master verify`, `master plan`, `master show-prompts`
    runs          the pipeline driver, the run cache, cache administration
    optimization  prompt-optimization experiments and their metric
    publish       collect, spill, merge, the output files, card, report, plots, accounting
    quality       answers, checks, lengths, in-run verification
    simulation    the streaming simulator, the dialogue cache, saved program versions
    planning      scenario assignment, retrieval, jobs
    ingest        sources, field mapping, dedupe, decontamination, seed loading
    core          config, records, conversations, code fingerprints, file writing

Importing any of them only defines things; the CLI and the flows call modules.runtime.setup().
"""
