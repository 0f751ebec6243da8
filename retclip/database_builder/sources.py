"""Where database images come from: images with image-level labels, in a fixed order.

A source has a class vocabulary (the database's classes) and yields :class:`ImageRecord`s sorted
by image id, so every rank of a distributed build and every resumed run sees the same list.
Problems found while reading the labels (unknown Open Images MIDs, listed images without a file)
go into ``source.report`` for the build report rather than stopping the build.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

logger = logging.getLogger(__name__)

__all__ = [
    "ImageRecord",
    "ImageSource",
    "DatasetSource",
    "OpenImagesSource",
    "FolderSource",
    "build_source",
]


@dataclass(frozen=True)
class ImageRecord:
    """One image: its id (unique within the source), file path, and label names (vocabulary
    entries present in the image). ``dataset_dict`` is the detectron2 dict for dataset sources."""

    image_id: str
    path: str
    labels: Tuple[str, ...]
    dataset_dict: Optional[Dict[str, Any]] = field(default=None, compare=False, hash=False)
    #: The encoded image itself, for sources that stream images (webdataset tars); else None.
    data: Optional[bytes] = field(default=None, compare=False, hash=False, repr=False)


class ImageSource:
    """Base class: ``vocabulary`` (class names, "name, synonym" strings), ``records()`` sorted by
    id, ``name`` (for the manifest) and ``report`` (JSON-serialisable findings)."""

    name: str = ""
    vocabulary: List[str]
    report: Dict[str, Any]

    def records(self) -> List[ImageRecord]:
        raise NotImplementedError

    def chunks(
        self, shard_size: int, exclude_ids: Optional[Set[str]] = None
    ) -> List[Sequence[ImageRecord]]:
        """The build's work units in order: ``shard_size`` consecutive records each (chunk c
        becomes shard c). Streaming sources return lazy chunks (iterables) instead of lists."""
        records = [r for r in self.records() if not exclude_ids or r.image_id not in exclude_ids]
        return [records[i : i + shard_size] for i in range(0, len(records), shard_size)]

    def _finish(self, records: List[ImageRecord], max_images: int) -> List[ImageRecord]:
        records = sorted(records, key=lambda r: r.image_id)
        ids = [r.image_id for r in records]
        if len(set(ids)) != len(ids):
            dup = [i for i, c in Counter(ids).items() if c > 1][:5]
            raise ValueError(f"source {self.name}: image ids are not unique, e.g. {dup}")
        if max_images > 0:
            records = records[:max_images]
        return records


def _filter_vocabulary(vocabulary: List[str], classes: Sequence[str], where: str) -> List[str]:
    if not classes:
        return vocabulary
    by_name = {v.split(",")[0].strip().lower(): v for v in vocabulary}
    missing = [c for c in classes if c.split(",")[0].strip().lower() not in by_name]
    if missing:
        raise KeyError(
            f"{where}: classes {missing} are not in the source's {len(vocabulary)} classes"
        )
    return [by_name[c.split(",")[0].strip().lower()] for c in classes]


class DatasetSource(ImageSource):
    """A registered detectron2 dataset; image labels are the classes of its annotated segments
    (panoptic ``segments_info``, else the values of its semantic PNG)."""

    def __init__(
        self, dataset_name: str, *, classes: Sequence[str] = (), max_images: int = 0
    ) -> None:
        from detectron2.data import DatasetCatalog, MetadataCatalog

        if dataset_name not in DatasetCatalog.list():
            raise KeyError(
                f"dataset {dataset_name!r} is not registered with detectron2 (DatasetCatalog)"
            )
        self.name = dataset_name
        meta = MetadataCatalog.get(dataset_name)
        all_classes = list(meta.get("stuff_classes", None) or meta.get("thing_classes", None) or [])
        if not all_classes:
            raise ValueError(
                f"dataset {dataset_name!r} has no stuff_classes/thing_classes in its metadata"
            )
        self.dataset_classes = all_classes
        self.vocabulary = _filter_vocabulary(all_classes, classes, dataset_name)
        self._keep = {c for c in self.vocabulary}
        self._ignore = meta.get("ignore_label", 255)
        self._max_images = max_images
        self.report = {}

    def _labels(self, d: Dict[str, Any]) -> List[str]:
        if "segments_info" in d:
            ids = {int(s["category_id"]) for s in d["segments_info"]}
        elif "sem_seg_file_name" in d:
            import numpy as np
            from PIL import Image

            values = np.unique(np.asarray(Image.open(d["sem_seg_file_name"])))
            ids = {int(v) for v in values if int(v) != self._ignore}
        else:
            raise KeyError(
                f"{self.name}: dataset dict of {d.get('file_name')} has neither segments_info nor sem_seg_file_name"
            )
        names = [self.dataset_classes[i] for i in sorted(ids) if 0 <= i < len(self.dataset_classes)]
        return [n for n in names if n in self._keep]

    def records(self) -> List[ImageRecord]:
        from detectron2.data import DatasetCatalog

        out = []
        for d in DatasetCatalog.get(self.name):
            image_id = str(d.get("image_id", os.path.splitext(os.path.basename(d["file_name"]))[0]))
            out.append(ImageRecord(image_id, d["file_name"], tuple(self._labels(d)), d))
        return self._finish(out, self._max_images)


def _read_csv(path: str, required: Sequence[str]) -> List[Tuple[int, Dict[str, str]]]:
    """(line number, row) pairs of a CSV with a header naming at least ``required``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labels file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise KeyError(f"{path}: missing columns {missing}; has {reader.fieldnames}")
        return [(reader.line_num, row) for row in reader]


def image_path_inside(image_dir: str, name: str, where: str) -> str:
    """``image_dir/name`` for an image named in a labels file; a name that leaves ``image_dir``
    (absolute, or climbing out with ``..``) is an error naming ``where`` (file and line)."""
    root = os.path.normpath(os.path.abspath(image_dir))
    target = os.path.normpath(os.path.join(root, name))
    if os.path.isabs(name) or os.path.commonpath([root, target]) != root:
        raise ValueError(
            f"{where}: image {name!r} is outside DATABASE_BUILD.SOURCE.IMAGE_DIR {image_dir}"
        )
    return os.path.join(image_dir, name)


def _read_class_descriptions(path: str) -> Dict[str, str]:
    """MID -> display name; the CSV may have a header (V6+: LabelName,DisplayName) or not (V4)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Open Images class descriptions not found: {path}")
    out = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) < 2:
                continue
            if i == 0 and not row[0].startswith("/"):
                continue  # header
            out[row[0].strip()] = row[1].strip()
    if not out:
        raise ValueError(f"{path} holds no MID,name rows")
    return out


class OpenImagesSource(ImageSource):
    """Open Images subset: ``<image_dir>/<ImageID>.jpg`` plus the image-level labels CSV
    (ImageID,Source,LabelName,Confidence) and the class-descriptions CSV (MID -> name).

    Labels below ``min_confidence`` (human-verified negatives have 0) are dropped; MIDs missing
    from the descriptions are counted in ``report["unknown_mids"]``; labelled images without a
    file are counted in ``report["missing_files"]`` (one usually downloads a subset).
    """

    def __init__(
        self,
        image_dir: str,
        labels_file: str,
        class_descriptions: str,
        *,
        classes: Sequence[str] = (),
        min_confidence: float = 0.5,
        max_images: int = 0,
    ) -> None:
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"Open Images image directory not found: {image_dir}")
        self.name = f"open_images:{os.path.basename(os.path.normpath(image_dir))}"
        mid_to_name = _read_class_descriptions(class_descriptions)
        rows = _read_csv(labels_file, ["ImageID", "LabelName", "Confidence"])
        wanted_mids = None
        if classes:
            name_to_mid = {n.lower(): m for m, n in mid_to_name.items()}
            wanted_mids = []
            for c in classes:
                mid = c if c in mid_to_name else name_to_mid.get(c.lower())
                if mid is None:
                    raise KeyError(
                        f"class {c!r} is neither a MID nor a name in {class_descriptions}"
                    )
                wanted_mids.append(mid)
        unknown: Counter = Counter()
        labels: Dict[str, set] = {}
        for line, row in rows:
            where = f"{labels_file} line {line}"
            image_path_inside(image_dir, row["ImageID"].strip() + ".jpg", where)
            try:
                confidence = float(row["Confidence"])
            except ValueError as e:
                raise ValueError(
                    f"{where}: bad Confidence {row['Confidence']!r} for image {row['ImageID']}"
                ) from e
            mid = row["LabelName"].strip()
            if mid not in mid_to_name:
                unknown[mid] += 1
                continue
            if confidence < min_confidence or (wanted_mids is not None and mid not in wanted_mids):
                continue
            labels.setdefault(row["ImageID"].strip(), set()).add(mid_to_name[mid])
        if unknown:
            logger.warning(
                "%s: %d unknown MIDs (not in %s), e.g. %s",
                labels_file,
                len(unknown),
                class_descriptions,
                list(unknown)[:5],
            )
        if wanted_mids is not None:
            self.vocabulary = [mid_to_name[m] for m in wanted_mids]
        else:
            self.vocabulary = sorted({n for names in labels.values() for n in names})
        missing, records = 0, []
        for image_id, names in labels.items():
            path = os.path.join(image_dir, image_id + ".jpg")
            if not os.path.isfile(path):
                missing += 1
                continue
            records.append(ImageRecord(image_id, path, tuple(sorted(names))))
        self._records, self._max_images = records, max_images
        self.report = {"unknown_mids": dict(sorted(unknown.items())), "missing_files": missing}

    def records(self) -> List[ImageRecord]:
        return self._finish(self._records, self._max_images)


class FolderSource(ImageSource):
    """Any folder of images with labels in a CSV (columns ``image,labels``; labels separated by
    ";") or a JSON object ``{"relative/path.jpg": ["cat", "sofa"]}``. The image id is the
    relative path; the vocabulary is the sorted union of labels (or ``classes``)."""

    def __init__(
        self, image_dir: str, labels_file: str, *, classes: Sequence[str] = (), max_images: int = 0
    ) -> None:
        if not os.path.isdir(image_dir):
            raise FileNotFoundError(f"image directory not found: {image_dir}")
        self.name = f"folder:{os.path.basename(os.path.normpath(image_dir))}"
        if labels_file.endswith(".json"):
            if not os.path.isfile(labels_file):
                raise FileNotFoundError(f"labels file not found: {labels_file}")
            with open(labels_file) as f:
                table = json.load(f)
            if not isinstance(table, dict):
                raise ValueError(f"{labels_file} must hold a JSON object image -> list of labels")
            for img in table:
                image_path_inside(image_dir, img, f"{labels_file} key {img!r}")
        else:
            table = {}
            for line, r in _read_csv(labels_file, ["image", "labels"]):
                image_path_inside(image_dir, r["image"], f"{labels_file} line {line}")
                table[r["image"]] = r["labels"].split(";")
        parsed = {
            img: sorted({str(x).strip() for x in names if str(x).strip()})
            for img, names in table.items()
        }
        union = sorted({n for names in parsed.values() for n in names})
        self.vocabulary = _filter_vocabulary(union, classes, labels_file) if classes else union
        keep = set(self.vocabulary)
        self._records = [
            ImageRecord(img, os.path.join(image_dir, img), tuple(n for n in names if n in keep))
            for img, names in parsed.items()
        ]
        self._max_images = max_images
        self.report = {}

    def records(self) -> List[ImageRecord]:
        return self._finish(self._records, self._max_images)


def build_source(cfg) -> ImageSource:
    """The source named by ``cfg.DATABASE_BUILD.SOURCE.TYPE``."""
    s = cfg.DATABASE_BUILD.SOURCE
    classes = list(s.CLASSES)
    if s.TYPE == "dataset":
        return DatasetSource(s.DATASET, classes=classes, max_images=s.MAX_IMAGES)
    if s.TYPE == "open_images":
        return OpenImagesSource(
            s.IMAGE_DIR,
            s.LABELS_FILE,
            s.CLASS_DESCRIPTIONS,
            classes=classes,
            min_confidence=s.MIN_CONFIDENCE,
            max_images=s.MAX_IMAGES,
        )
    if s.TYPE == "folder":
        return FolderSource(s.IMAGE_DIR, s.LABELS_FILE, classes=classes, max_images=s.MAX_IMAGES)
    if s.TYPE == "webdataset":
        from .webdataset_source import WebDatasetSource

        if s.MAX_IMAGES:
            raise ValueError(
                "DATABASE_BUILD.SOURCE.MAX_IMAGES is not supported for TYPE 'webdataset' "
                "(tars are streamed); list fewer tars in SOURCE.URLS"
            )
        return WebDatasetSource(s.URLS, classes=classes)
    raise ValueError(
        "DATABASE_BUILD.SOURCE.TYPE must be 'dataset', 'open_images', 'folder' or 'webdataset', "
        f"got {s.TYPE!r}"
    )
