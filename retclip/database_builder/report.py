"""The build report: sums the per-chunk records of a finished build into ``build/report.json``
(skipped images, labels the detector never found, forward counts per model, images/s)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

from retclip.retrieval.database import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["read_chunk_records", "write_build_report", "image_paths", "REPORT_NAME"]

REPORT_NAME = "report.json"


def read_json_record(path: Path) -> Dict[str, Any]:
    """One build record; a torn or edited file is an error naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt build record {path}: {e}") from e


def read_chunk_records(db_dir: str) -> List[Dict[str, Any]]:
    """All ``build/part*.json`` records of a database directory, in chunk order."""
    return [read_json_record(p) for p in sorted((Path(db_dir) / "build").glob("part*.json"))]


def image_paths(db_dir: str) -> Dict[str, str]:
    """Image id -> source image path, from the build records (for thumbnails)."""
    return {
        img["image_id"]: img["path"] for rec in read_chunk_records(db_dir) for img in rec["images"]
    }


def write_build_report(db_dir: Path, source, *, num_chunks: int) -> Dict[str, Any]:
    """Aggregate the chunk records of a complete build and write ``build/report.json``.

    Returns:
        the report dict: images (total/ok/no_labels/unreadable lists), per-class label and
        no-detection counts, segments and dropped masks, forwards per model (images through each
        model: totals and per processed image), module calls (a batched forward counts once),
        seconds and images/s, and the source's own findings.
    """
    from retclip.retrieval import FeatureDatabase

    records = [r for r in read_chunk_records(str(db_dir)) if r["chunk"] < num_chunks]
    status: Counter = Counter()
    labelled: Counter = Counter()
    undetected: Counter = Counter()
    forwards: Counter = Counter()
    calls: Counter = Counter()
    model_seconds: Counter = Counter()
    unreadable, no_labels = [], []
    dropped, seconds = 0, 0.0
    for rec in records:
        forwards.update(rec["forwards"])
        calls.update(rec.get("calls", {}))
        model_seconds.update(rec.get("model_seconds", {}))
        seconds += rec["seconds"]
        for img in rec["images"]:
            status[img["status"]] += 1
            labelled.update(img["labels"])
            if img["status"] == "unreadable":
                unreadable.append(
                    {
                        "image_id": img["image_id"],
                        "path": img["path"],
                        "error": img.get("error", ""),
                    }
                )
            elif img["status"] == "no_labels":
                no_labels.append(img["image_id"])
            else:
                undetected.update(img.get("undetected", []))
                dropped += img.get("dropped_small", 0)
    db = FeatureDatabase.open(db_dir)
    ok = status["ok"]
    report = {
        "database": str(db_dir),
        "encoder": str(db.fingerprint),
        "source": getattr(source, "name", ""),
        "source_findings": getattr(source, "report", {}),
        "images": {
            "total": sum(status.values()),
            "ok": ok,
            "no_labels": no_labels,
            "unreadable": unreadable,
        },
        "vectors": len(db),
        "segments_per_class": dict(zip(db.class_names, db.class_counts)),
        "images_per_label": dict(sorted(labelled.items())),
        "labels_without_detection": dict(sorted(undetected.items())),
        "masks_empty_at_clip_resolution": dropped,
        "forwards": dict(sorted(forwards.items())),
        # Module calls: a batched CLIP forward over several images counts once here.
        "calls": dict(sorted(calls.items())),
        "forwards_per_processed_image": (
            {k: v / ok for k, v in sorted(forwards.items())} if ok else {}
        ),
        "seconds": seconds,
        "model_seconds": {k: round(v, 3) for k, v in sorted(model_seconds.items())},
        "images_per_second": ok / seconds if seconds > 0 else 0.0,
    }
    atomic_write_json(Path(db_dir) / "build" / REPORT_NAME, report)
    logger.info(
        "database %s: %d vectors from %d images (%d unreadable, %d without labels), %.2f images/s; forwards %s",
        db_dir,
        len(db),
        ok,
        len(unreadable),
        len(no_labels),
        report["images_per_second"],
        report["forwards"],
    )
    return report
