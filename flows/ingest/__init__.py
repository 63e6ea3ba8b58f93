"""Seeds in: sources (files, folders, Hugging Face), field mapping, dedupe, decontamination,
sampling and loading."""
