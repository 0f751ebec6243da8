"""Ensemble sweeps without re-running the network: a per-image score cache written during
evaluation, recombination of cached scores at new (alpha, beta, gamma), fast metrics, reports."""
from retclip import compat as _compat

_compat.apply_all()  # before detectron2 is first imported
