"""Training files for the trainers a dataset is fed to, one module per trainer's format
(llamafactory, trl, axolotl); `export` writes them beside the dataset, each file leaving the
weight-0 turns (publish.flawed_turns: mask) out of the loss the way its trainer can."""
