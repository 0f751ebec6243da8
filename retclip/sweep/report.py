"""Markdown tables in the paper's layout and PQ heatmaps, from evaluation or sweep results.

Tables 1-3 take one ``metrics_eval.json`` per row (rows and labels from
``configs/expected/table<N>.json``) and print our PQ / mAP / mIoU beside the paper's, as
fractions like the paper. Table 4 takes sweep rows. Heatmaps show PQ over alpha x gamma (at the
best beta) and beta x gamma (at the best alpha), the best point marked; matplotlib's Agg backend.
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from retclip.utils.fileio import atomic_path

from .expected import metric_value, read_results

__all__ = ["table_markdown", "sweep_markdown", "pq_heatmaps", "best_row"]


def _fmt(value: Optional[float], scale: float = 100.0) -> str:
    return "-" if value is None or math.isnan(value) else f"{value / scale:.3f}"


def table_markdown(spec: Mapping[str, Any], results_root: str, note: str = "") -> str:
    """Table 1-3 in the paper's layout: label columns, then ours and the paper's for each metric."""
    labels = list(spec["label_columns"])
    metrics = list(spec["metrics"])
    head = labels + [f"{m}" for m in metrics] + [f"{m} (paper)" for m in metrics]
    lines = [
        f"**{spec['title']}**" + (f" - {note}" if note else ""),
        "",
        "| " + " | ".join(head) + " |",
    ]
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for row in spec["rows"]:
        results = read_results(results_root, row["name"]) or {}
        ours = [_fmt(metric_value(results, *spec["metrics"][m])) for m in metrics]
        paper = [_fmt(row["paper"].get(m)) for m in metrics]
        lines.append("| " + " | ".join([row["labels"][c] for c in labels] + ours + paper) + " |")
    return "\n".join(lines) + "\n"


def best_row(rows: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    finite = [r for r in rows if not math.isnan(float(r["PQ"]))]
    return max(finite, key=lambda r: r["PQ"]) if finite else None


def sweep_markdown(
    rows: Sequence[Mapping[str, Any]], spec: Optional[Mapping[str, Any]] = None, note: str = ""
) -> str:
    """Table 4 layout (alpha, beta, gamma, PQ) plus mAP, mIoU and the seen/unseen PQ; the paper's
    PQ beside ours where the point is one of Table 4's; the best PQ in bold."""
    paper = {}
    if spec is not None:
        paper = {
            (round(p["alpha"], 6), round(p["beta"], 6), round(p["gamma"], 6)): p["paper_PQ"]
            for p in spec["points"]
        }
    best = best_row(rows)
    title = spec["title"] if spec else "Ensemble sweep"
    lines = [f"**{title}**" + (f" - {note}" if note else ""), ""]
    lines.append("| alpha | beta | gamma | PQ | PQ (paper) | PQ seen | PQ unseen | mAP | mIoU |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (-r["alpha"], -r["beta"], -r["gamma"])):
        pq = _fmt(r["PQ"])
        if best is not None and r is best:
            pq = f"**{pq}**"
        key = (r["alpha"], r["beta"], r["gamma"])
        cells = [
            f"{r['alpha']:.1f}",
            f"{r['beta']:.1f}",
            f"{r['gamma']:.1f}",
            pq,
            _fmt(paper.get(key)),
            _fmt(r.get("PQ_seen")),
            _fmt(r.get("PQ_unseen")),
            _fmt(r.get("mAP")),
            _fmt(r.get("mIoU")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _grid(
    rows: Sequence[Mapping[str, Any]], xkey: str, ykey: str, fixed: Dict[str, float]
) -> Tuple[List[float], List[float], List[List[float]]]:
    sel = [r for r in rows if all(abs(r[k] - v) < 1e-9 for k, v in fixed.items())]
    xs = sorted({r[xkey] for r in sel})
    ys = sorted({r[ykey] for r in sel})
    values = [[float("nan")] * len(xs) for _ in ys]
    for r in sel:
        values[ys.index(r[ykey])][xs.index(r[xkey])] = float(r["PQ"])
    return xs, ys, values


def pq_heatmaps(
    rows: Sequence[Mapping[str, Any]], out_dir: str, title: str = "", dpi: int = 80
) -> List[str]:
    """Write pq_alpha_gamma.png and pq_beta_gamma.png; returns their paths.

    alpha x gamma is drawn at the best point's beta, beta x gamma at its alpha; cells without a
    sweep point are blank; the best point is marked with a star.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    best = best_row(rows)
    if best is None:
        raise ValueError("no sweep row with a finite PQ: nothing to plot")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for xkey, fixed_key in (("alpha", "beta"), ("beta", "alpha")):
        xs, ys, values = _grid(rows, xkey, "gamma", {fixed_key: best[fixed_key]})
        fig, ax = plt.subplots(figsize=(4.8, 3.8))
        data = np.ma.masked_invalid(np.array(values))
        im = ax.imshow(data, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(xs)), [f"{x:.1f}" for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:.1f}" for y in ys])
        ax.set_xlabel(xkey)
        ax.set_ylabel("gamma")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="white")
        ax.plot(
            xs.index(best[xkey]),
            ys.index(best["gamma"]),
            marker="*",
            markersize=16,
            color="red",
            markeredgecolor="black",
            linestyle="none",
        )
        head = f"{title}\n" if title else ""
        ax.set_title(
            f"{head}PQ at {fixed_key} = {best[fixed_key]:.1f}; star = best ({best['PQ']:.2f})",
            fontsize=8,
        )
        fig.colorbar(im, ax=ax, label="PQ")
        fig.tight_layout()
        path = os.path.join(out_dir, f"pq_{xkey}_gamma.png")
        with atomic_path(path) as tmp:
            fig.savefig(str(tmp), dpi=dpi, format="png")
        plt.close(fig)
        paths.append(path)
    return paths
