"""The score cache writer: a detectron2 ``DatasetEvaluator`` that saves, during a normal
evaluation, each image's ensemble inputs into the cache format of :mod:`retclip.sweep.cache`
(safetensors shards written atomically, a manifest with the model fingerprint)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from safetensors.torch import save_file

from retclip.modeling.postprocessing import PostprocessBuffers, PostprocessSettings
from retclip.utils.fileio import atomic_path, atomic_write_json

from .cache import (
    _MASK_DTYPES,
    _SHARD_RE,
    MODEL_MANIFEST_FIELDS,
    REQUIRED_TENSOR_FIELDS,
    SCHEMA_VERSION,
    TENSOR_FIELDS,
    CachedImage,
    ScoreCache,
    StaleCacheError,
    _flatten,
    _jsonable,
    _shard_infos,
    compare_fingerprints,
)
from .recombine import mask_summaries

logger = logging.getLogger(__name__)

__all__ = ["ScoreCacheWriter"]


class ScoreCacheWriter(DatasetEvaluator):
    """Writes the score cache from a normal ``--eval-only`` run (add it to the evaluators).

    The model must put ``"ensemble_inputs"`` in each output (``model.return_ensemble_inputs =
    True``); :func:`retclip.sweep.hooks.add_score_cache` does both.

    Args:
        cache_dir: output directory (created).
        dataset_name: the evaluated dataset (its image ids are recorded).
        fingerprint: ``model.ensemble_fingerprint()``; a cache already in ``cache_dir`` with
            another fingerprint is refused (:class:`StaleCacheError`), one with the same is
            completed (images already cached are skipped).
        model_manifest: ``model.score_cache_manifest()``: the model's ensemble mode and weights,
            vocabulary and post-processing settings (with its thing ids), so that a sweep
            post-processes exactly as the model did, without re-reading any config.
        mask_dtype: "float32" (exact sweeps) or "float16" (half the size, metrics to ~1e-3).
        shard_mb: a shard is written once its images hold this many MB (or 64 images).
    """

    def __init__(
        self,
        cache_dir: str,
        *,
        dataset_name: str,
        fingerprint: Mapping[str, Any],
        model_manifest: Mapping[str, Any],
        mask_dtype: str = "float32",
        shard_mb: float = 1024.0,
        max_images_per_shard: int = 64,
    ) -> None:
        if mask_dtype not in _MASK_DTYPES:
            raise ValueError(
                f"mask_dtype must be one of {sorted(_MASK_DTYPES)}, got {mask_dtype!r}"
            )
        if shard_mb <= 0:
            raise ValueError(f"shard_mb must be positive, got {shard_mb}")
        missing = [k for k in MODEL_MANIFEST_FIELDS if k not in model_manifest]
        if missing:
            raise KeyError(f"model_manifest lacks {missing} (see RetCLIP.score_cache_manifest)")
        self.cache_dir = os.path.expanduser(cache_dir)
        self.dataset_name = dataset_name
        self.fingerprint = _jsonable(fingerprint)
        self.model_manifest = _jsonable(model_manifest)
        self.mask_dtype = mask_dtype
        self.shard_bytes = int(shard_mb * 2**20)
        self.max_images_per_shard = int(max_images_per_shard)
        self._settings = PostprocessSettings.from_dict(self.model_manifest["postprocess"])
        self._buffers = PostprocessBuffers()
        self._done: set = set()
        self._pending: List[CachedImage] = []
        self._pending_bytes = 0
        self._shard_index = 0

    # --------------------------------------------------------------- manifest
    def _manifest(self) -> Dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "fingerprint": self.fingerprint,
            "dataset": self.dataset_name,
            "model": self.model_manifest,
            "mask_dtype": self.mask_dtype,
            "expected_image_ids": [r["image_id"] for r in DatasetCatalog.get(self.dataset_name)],
            "complete": False,
        }

    def reset(self) -> None:
        shard_dir = os.path.join(self.cache_dir, "shards")
        manifest_path = os.path.join(self.cache_dir, "manifest.json")
        self._pending, self._pending_bytes = [], 0
        if comm.is_main_process():
            os.makedirs(shard_dir, exist_ok=True)
            fresh = self._manifest()
            if os.path.isfile(manifest_path):
                old = ScoreCache.read_manifest(self.cache_dir)
                # the weights are recorded, not compared: the cached tensors do not depend on them
                check = {k: old.get(k) for k in ("fingerprint", "dataset", "mask_dtype")}
                check["postprocess"] = old.get("model", {}).get("postprocess")
                want = {k: fresh[k] for k in ("fingerprint", "dataset", "mask_dtype")}
                want["postprocess"] = fresh["model"]["postprocess"]
                diffs = compare_fingerprints(_flatten(check), _flatten(want))
                if diffs:
                    raise StaleCacheError(
                        f"score cache {self.cache_dir} was written by another setup ({'; '.join(diffs)}); "
                        "use a new TEST.SCORE_CACHE_DIR or delete the old one"
                    )
            atomic_write_json(manifest_path, fresh)
        comm.synchronize()
        os.makedirs(shard_dir, exist_ok=True)
        rank = comm.get_rank()
        self._done = set()
        self._shard_index = 0
        for name in os.listdir(shard_dir):
            m = _SHARD_RE.match(name)
            if m is None:
                continue
            if int(m.group(1)) == rank:
                self._shard_index = max(self._shard_index, int(m.group(2)) + 1)
            self._done.update(
                info["image_id"] for info in _shard_infos(os.path.join(shard_dir, name))
            )
        if self._done:
            logger.info(
                "Score cache %s already holds %d images; they are skipped",
                self.cache_dir,
                len(self._done),
            )

    # ---------------------------------------------------------------- process
    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs):
            if "ensemble_inputs" not in out:
                raise KeyError(
                    "model output has no 'ensemble_inputs': set model.return_ensemble_inputs = True "
                    "(retclip.sweep.hooks.add_score_cache does) to write a score cache"
                )
            if inp["image_id"] in self._done:
                continue
            self._pending.append(self._entry(inp, out["ensemble_inputs"]))
            self._pending_bytes += sum(
                t.numel() * t.element_size() for t in self._pending[-1].tensors.values()
            )
            if (
                self._pending_bytes >= self.shard_bytes
                or len(self._pending) >= self.max_images_per_shard
            ):
                self._flush()

    def _entry(self, inp: Dict[str, Any], ens: Mapping[str, Any]) -> CachedImage:
        missing = [k for k in REQUIRED_TENSOR_FIELDS if k not in ens]
        if missing:
            raise KeyError(f"ensemble_inputs of image {inp['image_id']} lacks {missing}")
        tensors = {}
        for key in TENSOR_FIELDS:
            value = ens.get(key)
            if value is None:
                continue
            value = value.detach().cpu()
            if key == "mask_logits":
                value = value.to(_MASK_DTYPES[self.mask_dtype])
            tensors[key] = (
                value.contiguous().clone()
            )  # own storage: safetensors refuses shared tensors
        h, w = (int(x) for x in ens["image_size"])
        if "padded_size" not in ens:
            raise KeyError(f"ensemble_inputs of image {inp['image_id']} lacks 'padded_size'")
        hp, wp = (int(x) for x in ens["padded_size"])
        if tensors["mask_logits"].ndim != 3 or h > hp or w > wp:
            raise ValueError(
                f"image {inp['image_id']}: mask_logits {tuple(tensors['mask_logits'].shape)}, image_size "
                f"{(h, w)}, padded_size {(hp, wp)}; the contract is (Q, h', w') decoder-resolution "
                "masks of a padded input at least as large as the image"
            )
        height, width = (int(x) for x in ens["output_size"])
        info = {
            "image_id": inp["image_id"],
            "file_name": inp.get("file_name"),
            "height": height,
            "width": width,
            "image_size": [h, w],
            "padded_size": [hp, wp],
        }
        # The per-query values a sweep would otherwise recompute per image at full resolution,
        # from the logits as stored (float16 ones cast back, as the reader does), on the
        # model's device (reused buffers on CPU only: CUDA's allocator already caches memory).
        stored = ens["mask_logits"].detach().to(_MASK_DTYPES[self.mask_dtype]).float()
        tensors.update(
            mask_summaries(
                CachedImage(info=info, tensors={"mask_logits": stored}),
                self._settings,
                self._buffers if stored.device.type == "cpu" else None,
            )
        )
        return CachedImage(info=info, tensors=tensors)

    def _flush(self) -> None:
        if not self._pending:
            return
        shard_dir = os.path.join(self.cache_dir, "shards")
        name = f"r{comm.get_rank()}-{self._shard_index:05d}.safetensors"
        flat = {f"{i}.{k}": v for i, e in enumerate(self._pending) for k, v in e.tensors.items()}
        metadata = {
            "images": json.dumps([e.info for e in self._pending]),
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
        }
        with atomic_path(os.path.join(shard_dir, name)) as tmp:
            save_file(flat, str(tmp), metadata=metadata)
        self._done.update(e.info["image_id"] for e in self._pending)
        logger.info(
            "Score cache: wrote %s (%d images, %.1f MB)",
            name,
            len(self._pending),
            self._pending_bytes / 2**20,
        )
        self._shard_index += 1
        self._pending, self._pending_bytes = [], 0

    def evaluate(self) -> None:
        self._flush()
        self._buffers = PostprocessBuffers()  # give the masks' memory back
        comm.synchronize()
        if comm.is_main_process():
            cache = ScoreCache(self.cache_dir)
            manifest = dict(cache.manifest, complete=not cache.missing_image_ids)
            atomic_write_json(os.path.join(self.cache_dir, "manifest.json"), manifest)
            logger.info("Score cache %s: %s", self.cache_dir, cache.summary())
        return None
