"""Base model loading, MoRE injection and router state."""
