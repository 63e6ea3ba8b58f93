"""Before any LM call: each seed's scenario and debate rounds, the analogy partners (retrieval),
the jobs."""
