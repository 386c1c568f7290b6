"""Run directories: config, metrics, summary, checkpoints and provenance."""
