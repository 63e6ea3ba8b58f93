"""From finished dialogues to files: collect, spill, merge, the output writers, the dataset card,
the report, plots and LM accounting."""
