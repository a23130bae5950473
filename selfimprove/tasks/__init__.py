"""Verifiable task domains: prompt sources, reference answers and in-graph verifiers."""

from selfimprove.tasks.arithmetic import ArithmeticConfig, ArithmeticTask

__all__ = ["ArithmeticConfig", "ArithmeticTask"]
