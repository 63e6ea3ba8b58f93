"""What every cache of the project shares: canonical JSON, diskcache disks that never
unpickle, sealed values, and the group-commit writer."""
