"""Ensemble sweeps without re-running the network: a per-image score cache written during
evaluation, recombination of cached scores at new (alpha, beta, gamma), fast metrics, reports."""
