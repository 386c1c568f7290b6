"""Rank-one experts: the split of each LoRA along its rank and the frozen per-matrix expert bank."""
