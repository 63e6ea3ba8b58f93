"""Checks as pure functions (answers, structure, intent, lengths) and the in-run verification with
the judge."""
