"""The pipeline driver (one, for `master run` and the augment flow), the run cache and cache
administration."""
