"""Sweep grids over the ensemble weights (alpha, beta, gamma), each checked to lie in [0, 1].

Two forms, combinable: a product of per-weight value lists (``--alpha 0.3,0.4 --beta 0.7
--gamma 0,0.3``) and explicit points (Table 4 of the paper is a list of points, not a product).
A grid file (YAML or JSON) holds either or both::

    alpha: [0.3, 0.4, 0.5]      # product of these three lists ...
    beta: [0.7, 0.8]
    gamma: [0.2, 0.3]
    points:                     # ... plus these points
      - [1.0, 1.0, 0.3]
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

__all__ = [
    "GridPoint",
    "check_weight",
    "parse_values",
    "product_grid",
    "load_grid_file",
    "make_grid",
]

_DECIMALS = 6


def check_weight(name: str, value: float) -> float:
    """``value`` as float if it lies in [0, 1], else ValueError naming the weight and value."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} value {value!r} is not a number") from e
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} value {v} is outside [0, 1]")
    return round(v, _DECIMALS)


@dataclass(frozen=True, order=True)
class GridPoint:
    """One (alpha, beta, gamma): the paper's weights for seen classes, unseen classes, retrieval."""

    alpha: float
    beta: float
    gamma: float

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            object.__setattr__(self, name, check_weight(name, getattr(self, name)))

    def key(self, mode: str) -> Tuple[str, float, float, float]:
        """Identity of the point in a results file (rounded to 1e-6)."""
        return (mode, self.alpha, self.beta, self.gamma)


def parse_values(text: str, name: str) -> List[float]:
    """ "0.3,0.4,0.5" -> [0.3, 0.4, 0.5], each checked (the error names ``name``)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{name}: no values in {text!r}")
    return [check_weight(name, p) for p in parts]


def product_grid(
    alphas: Sequence[float], betas: Sequence[float], gammas: Sequence[float]
) -> List[GridPoint]:
    return [GridPoint(a, b, g) for a, b, g in itertools.product(alphas, betas, gammas)]


def _dedupe(points: Iterable[GridPoint]) -> List[GridPoint]:
    seen, out = set(), []
    for p in points:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def load_grid_file(path: str) -> List[GridPoint]:
    """Points of a YAML / JSON grid file (see the module docstring)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"grid file not found: {path}")
    with open(path) as f:
        data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{path}: a grid file is a mapping with alpha/beta/gamma lists and/or points"
        )
    unknown = set(data) - {"alpha", "beta", "gamma", "points"}
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {sorted(unknown)}; valid: alpha, beta, gamma, points"
        )
    points: List[GridPoint] = []
    lists = [data.get(k) for k in ("alpha", "beta", "gamma")]
    if any(v is not None for v in lists):
        if any(v is None for v in lists):
            raise ValueError(f"{path}: give all of alpha, beta and gamma lists, or only points")
        checked = [
            [check_weight(f"{path}: {k}", x) for x in _as_list(v)]
            for k, v in zip(("alpha", "beta", "gamma"), lists)
        ]
        points.extend(product_grid(*checked))
    for i, p in enumerate(data.get("points") or []):
        if not isinstance(p, (list, tuple)) or len(p) != 3:
            raise ValueError(f"{path}: points[{i}] must be [alpha, beta, gamma], got {p!r}")
        points.append(
            GridPoint(*(check_weight(f"{path}: points[{i}].{n}", x) for n, x in zip("abg", p)))
        )
    if not points:
        raise ValueError(f"{path}: the grid is empty")
    return _dedupe(points)


def _as_list(value: Any) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def make_grid(
    alpha: Optional[str] = None,
    beta: Optional[str] = None,
    gamma: Optional[str] = None,
    grid_file: Optional[str] = None,
) -> List[GridPoint]:
    """The command-line grid: a product of the three value lists and/or a grid file's points."""
    points: List[GridPoint] = []
    given = [alpha, beta, gamma]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ValueError(
                "give all of --alpha, --beta and --gamma (comma-separated values), or --grid FILE"
            )
        points.extend(
            product_grid(
                parse_values(alpha, "alpha"),
                parse_values(beta, "beta"),
                parse_values(gamma, "gamma"),
            )
        )
    if grid_file:
        points.extend(load_grid_file(grid_file))
    if not points:
        raise ValueError("no grid: give --alpha/--beta/--gamma or --grid FILE")
    return _dedupe(points)
