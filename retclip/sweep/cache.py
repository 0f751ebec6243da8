"""Score cache: per image, everything the ensemble and post-processing need, saved during one
evaluation so that a sweep over (alpha, beta, gamma) never runs the network again.

Layout of a cache directory::

    manifest.json                       schema, model fingerprint, dataset, the model's ensemble
                                        mode, weights, classes and post-processing settings (with
                                        thing ids), expected image ids, complete flag
    shards/r<rank>-<n>.safetensors      a few images each: tensors "<i>.<field>", and in the
                                        safetensors metadata the images' ids / files / sizes and
                                        the fingerprint again

Shards and the manifest are written to a temporary name and renamed, so a killed run leaves only
whole shards: the reader uses them and reports the images that are missing. A cache written by
another model, database or vocabulary (its ``model.ensemble_fingerprint()`` differs) is refused,
naming the entries that differ. The writer is :class:`retclip.sweep.writer.ScoreCacheWriter`.

Size: mask logits are kept at the decoder's resolution, Q x H/4 x W/4 of the padded input (the
sweep upsamples them exactly as the model's post-processing does). At ADE20k-150 val settings
(2000 images resized to 800 on the short side, padded to about 800 x 1088, Q = 250) that is
~54 MB per image in float32, ~110 GB for the split. Next to them the writer stores per-query
values derived from the full-resolution masks (``SUMMARY_TENSOR_FIELDS``: own-mask areas, tile
bounds, instance scores' mask factor and the instance masks' RLEs), so that a sweep point does
not recompute them per image: ~4 MB per image at that size with random weights' diffuse masks,
less for a trained model's. ``mask_dtype="float16"`` halves the logits; metrics
then match a full
evaluation to ~1e-3 (PQ / mIoU points) instead of exactly (measured on synthetic scores: at most
0.0009, mask AP unchanged).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open

from retclip.utils.errors import BadFileError

logger = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "SUMMARY_TENSOR_FIELDS",
    "TENSOR_FIELDS",
    "CachedImage",
    "ScoreCache",
    "StaleCacheError",
    "compare_fingerprints",
]

SCHEMA_VERSION = 3  # 2: decoder-resolution mask logits + padded_size; 3: "model" entry
#: Tensors stored per image: the model's ensemble inputs (names of
#: :func:`retclip.ensemble.ensemble_probabilities`) and mask logits. ``valid`` only when the model
#: uses it, ``retrieval_scores`` only when the model has a database.
TENSOR_FIELDS = (
    "in_vocab_logits",
    "clip_logits",
    "retrieval_scores",
    "retrieval_available",
    "seen",
    "valid",
    "mask_logits",
)
REQUIRED_TENSOR_FIELDS = ("in_vocab_logits", "clip_logits", "seen", "mask_logits")
#: Per-query values the writer derives from the full-resolution masks so that a sweep skips
#: those whole-image passes (:func:`retclip.sweep.recombine.mask_summaries`): own-mask areas and
#: tile bounds (panoptic), mean probability inside the instance masks and the instance masks'
#: RLEs (instance output). Optional: a cache without them is read, the sweep computes them.
SUMMARY_TENSOR_FIELDS = (
    "mask_own_area",
    "mask_tile_low",
    "mask_tile_high",
    "mask_tile_size",
    "mask_inside",
    "mask_rle_counts",
    "mask_rle_offsets",
)
#: The manifest's "model" entry (``RetCLIP.score_cache_manifest()``).
MODEL_MANIFEST_FIELDS = ("ensemble_mode", "weights", "class_names", "postprocess")
_STORED_FIELDS = TENSOR_FIELDS + SUMMARY_TENSOR_FIELDS
_MASK_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_SHARD_RE = re.compile(r"^r(\d+)-(\d+)\.safetensors$")


class StaleCacheError(ValueError):
    """The cache was written by another model, database, vocabulary or dataset."""


def compare_fingerprints(cached: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """Entries that differ, as "key: cached X, now Y" strings (empty when they agree)."""
    diffs = []
    for key in sorted(set(cached) | set(current)):
        a, b = cached.get(key, "<absent>"), current.get(key, "<absent>")
        if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            diffs.append(f"{key}: cached {a!r}, now {b!r}")
    return diffs


def _jsonable(fingerprint: Mapping[str, Any]) -> Dict[str, Any]:
    return json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=str))


@dataclass
class CachedImage:
    """One cached image.

    Attributes:
        info: {"image_id", "file_name", "height", "width", "image_size": [h, w],
            "padded_size": [Hp, Wp]} - what the evaluators read from a model input, plus the
            image size inside the padded batch and the padded size.
        tensors: ``TENSOR_FIELDS`` -> tensors (in_vocab_logits / clip_logits (Q, K+1),
            retrieval_scores (Q, K), retrieval_available / seen (K,) bool, valid (Q,) bool or
            absent, mask_logits (Q, Hp/4, Wp/4) float32 (float16 caches are cast back)), and
            the ``SUMMARY_TENSOR_FIELDS`` when the writer stored them.
    """

    info: Dict[str, Any]
    tensors: Dict[str, torch.Tensor]

    @property
    def evaluator_input(self) -> Dict[str, Any]:
        """The dict a detectron2 evaluator expects as this image's model input."""
        keys = ("image_id", "file_name", "height", "width")
        return {k: self.info[k] for k in keys}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _shard_metadata(path: str) -> Dict[str, str]:
    """A shard's metadata; a truncated or foreign file is a BadFileError naming it (safetensors
    says only "incomplete metadata" or "invalid header length")."""
    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise BadFileError(
            f"score cache shard {path} cannot be read ({e}); it is truncated or damaged: delete it "
            "and write the cache again"
        ) from e


def _shard_infos(path: str) -> List[Dict[str, Any]]:
    return json.loads(_shard_metadata(path).get("images", "[]"))


class ScoreCache:
    """Reads a score cache; iterating yields :class:`CachedImage` in image-id order of the shards.

    Args:
        cache_dir: a directory written by :class:`ScoreCacheWriter`.
        expected_fingerprint: if given, a cache whose fingerprint differs raises
            :class:`StaleCacheError` naming the entries that differ.
    Raises:
        FileNotFoundError: no manifest.json in ``cache_dir``.
        StaleCacheError: fingerprint mismatch, or a shard written by another model.
    """

    def __init__(
        self, cache_dir: str, expected_fingerprint: Optional[Mapping[str, Any]] = None
    ) -> None:
        self.cache_dir = os.path.expanduser(cache_dir)
        self.manifest = self.read_manifest(self.cache_dir)
        self.fingerprint: Dict[str, Any] = self.manifest["fingerprint"]
        if expected_fingerprint is not None:
            self.check_fingerprint(expected_fingerprint)
        self._index: Dict[Any, tuple] = {}
        self.partial_files: List[str] = []
        shard_dir = os.path.join(self.cache_dir, "shards")
        names = sorted(os.listdir(shard_dir)) if os.path.isdir(shard_dir) else []
        for name in names:
            path = os.path.join(shard_dir, name)
            if _SHARD_RE.match(name) is None:
                if name.endswith(".tmp"):
                    self.partial_files.append(name)
                continue
            meta = _shard_metadata(path)
            shard_fp = json.loads(meta.get("fingerprint", "{}"))
            diffs = compare_fingerprints(shard_fp, self.fingerprint)
            if diffs:
                raise StaleCacheError(
                    f"shard {path} was written by another model than the manifest's: {'; '.join(diffs)}"
                )
            for i, info in enumerate(json.loads(meta.get("images", "[]"))):
                self._index[info["image_id"]] = (path, i, info)
        expected = self.manifest.get("expected_image_ids") or []
        self.missing_image_ids = [i for i in expected if i not in self._index]
        if self.missing_image_ids or self.partial_files:
            logger.warning("Score cache %s is partial: %s", self.cache_dir, self.summary())

    @staticmethod
    def read_manifest(cache_dir: str) -> Dict[str, Any]:
        path = os.path.join(os.path.expanduser(cache_dir), "manifest.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no score cache at {cache_dir}: {path} does not exist")
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema_version {manifest.get('schema_version')!r}, this code reads {SCHEMA_VERSION}"
            )
        return manifest

    def check_fingerprint(self, expected: Mapping[str, Any]) -> None:
        diffs = compare_fingerprints(self.fingerprint, _jsonable(expected))
        if diffs:
            raise StaleCacheError(
                f"score cache {self.cache_dir} does not match the current model: {'; '.join(diffs)}"
            )

    @property
    def image_ids(self) -> List[Any]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def summary(self) -> str:
        expected = len(self.manifest.get("expected_image_ids") or [])
        text = f"{len(self)} of {expected} images cached"
        if self.missing_image_ids:
            shown = self.missing_image_ids[:10]
            more = (
                ""
                if len(self.missing_image_ids) <= 10
                else f" and {len(self.missing_image_ids) - 10} more"
            )
            text += f"; missing image ids {shown}{more}"
        if self.partial_files:
            text += f"; unfinished shard files ignored: {self.partial_files}"
        return text

    def load(self, image_id: Any) -> CachedImage:
        if image_id not in self._index:
            raise KeyError(f"image {image_id!r} is not in score cache {self.cache_dir}")
        path, i, info = self._index[image_id]
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            tensors = {k: f.get_tensor(f"{i}.{k}") for k in _STORED_FIELDS if f"{i}.{k}" in keys}
        tensors["mask_logits"] = tensors["mask_logits"].float()
        return CachedImage(info=dict(info), tensors=tensors)

    def __iter__(self) -> Iterator[CachedImage]:
        by_shard: Dict[str, List[tuple]] = {}
        for path, i, info in self._index.values():
            by_shard.setdefault(path, []).append((i, info))
        for path, items in by_shard.items():
            with safe_open(path, framework="pt") as f:
                keys = set(f.keys())
                for i, info in items:
                    tensors = {
                        k: f.get_tensor(f"{i}.{k}") for k in _STORED_FIELDS if f"{i}.{k}" in keys
                    }
                    tensors["mask_logits"] = tensors["mask_logits"].float()
                    yield CachedImage(info=dict(info), tensors=tensors)

    def subset(self, image_ids: Sequence[Any]) -> Iterator[CachedImage]:
        for image_id in image_ids:
            yield self.load(image_id)
