"""Local training on a client (no transport code here)."""
