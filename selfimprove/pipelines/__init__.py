"""Pipelines: one file per algorithm, each exposing `step(state, batch, rng) -> (state, metrics)`."""
