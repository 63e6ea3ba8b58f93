"""Dialogues out: the streaming simulator (many dialogues in flight on one event loop), the
dialogue cache, saved program versions."""
