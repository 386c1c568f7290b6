"""Recipes: short functions that assemble components into user-facing jobs."""
