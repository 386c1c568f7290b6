"""MoRE routing: the per-matrix top-K router and the routed linear layer."""
