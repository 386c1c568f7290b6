"""Generation, metrics, the code sandbox and the evaluation harness."""
