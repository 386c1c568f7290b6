"""Training/eval data: examples, prompt formatting, tasks and client partitioning."""
