"""The data model and shared utilities: the config, records, conversations (ShareGPT and chat
messages), code fingerprints, atomic file writing."""
