"""The local side of the metrics pipeline: a reader that keeps the latest points."""
