"""The database build of the paper (§2.1): image + image-level labels -> Grounding DINO boxes ->
SAM masks -> one dense CLIP map -> mask pooling -> (feature, label) rows.

Work unit: the source's sorted image list is cut into global chunks of ``shard_size`` images
(a webdataset source makes one chunk per tar); an array job ``k`` of ``n`` takes chunks
``c % n == k`` (:mod:`.parts`), and its rank r of world_size takes every world_size-th of those
from the r-th. Chunk c becomes exactly one shard named ``part<c>-000000`` (written even when
empty). A chunk whose shard exists is done, so a killed build resumes at the first missing chunk, and the finished database is the same whatever the interruptions or the
number of ranks. Within a chunk, images go through the models in windows of ``batch_size``: the
window's images with equal Grounding DINO input sizes share one detector forward, all its images
with boxes share one SAM image-encoder forward, and consecutive images whose CLIP inputs have the
same padded size share one CLIP forward. Each chunk's bookkeeping (image paths, skipped images, labels without
detection, forward counts, seconds) goes to ``build/part<c>.json`` before its shard is written;
:mod:`.report` sums them when all ranks are done.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch

from retclip.proposals import GroundTruthProposals, Proposals, ProposalSource
from retclip.retrieval import FeatureDatabase
from retclip.retrieval.database import atomic_write_json
from retclip.retrieval.safedir import DatabaseLock, DatabaseLockedError
from retclip.utils.image_io import ImageReadError, read_image

from retclip.modeling.segment_embedding import SegmentEmbedding

from retclip.retrieval.provenance import encode_mask_rle

from .counting import ForwardCounter
from retclip.retrieval.labels import write_label_array

from .parts import part_chunks
from .sources import ImageRecord, ImageSource

logger = logging.getLogger(__name__)

__all__ = ["DatabaseBuilder", "chunk_prefix", "RECORD_DIR"]

#: Sub-directory of the database holding per-chunk build records and the build report.
RECORD_DIR = "build"


def chunk_prefix(chunk: int) -> str:
    """Shard prefix of global chunk ``chunk`` (shards sort in chunk order)."""
    return f"part{chunk:06d}"


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _barrier() -> None:
    if _distributed():
        torch.distributed.barrier()


def _on_rank0_then_share(rank: int, step) -> None:
    """Run ``step()`` on rank 0; if it refuses (lock held, settings changed, other encoder),
    every rank raises the same error instead of waiting for rank 0 at a barrier."""
    error: Optional[BaseException] = None
    if rank == 0:
        try:
            step()
        except (ValueError, OSError, DatabaseLockedError) as e:
            error = e
    if _distributed():
        box = [error]
        torch.distributed.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise error


class DatabaseBuilder:
    """Builds (or resumes, or adds to) a feature database from an :class:`ImageSource`."""

    def __init__(
        self,
        *,
        encoder: SegmentEmbedding,
        proposals: ProposalSource,
        output_dir: str,
        shard_size: int = 64,
        batch_size: int = 1,
        dtype: str = "float16",
        max_shards_per_run: int = 0,
        shard_delay_s: float = 0.0,
        build_args: Optional[Dict[str, Any]] = None,
        settings: Optional[Dict[str, Any]] = None,
        counter: Optional[ForwardCounter] = None,
        progress: bool = True,
        shard_id: int = 0,
        num_shards: int = 1,
    ) -> None:
        """
        Args:
            encoder: the model's segment-embedding recipe (the same object the model's retrieval
                keys come from); its recipe, with the weights hash, goes in the manifest.
            proposals: GroundingDinoSamProposals (class-aware, from the image labels) or
                GroundTruthProposals (needs a dataset source).
            output_dir: database directory.
            shard_size: images per chunk/shard.
            batch_size: images of one chunk that go through the models together: at most this
                many share a Grounding DINO, SAM image-encoder or CLIP forward (1: one forward
                per image and model). Rows are the same for every value, up to float rounding.
            max_shards_per_run: stop after this many new shards per rank (0: no limit).
            shard_delay_s: sleep after each shard (tests kill the build in between).
            build_args: JSON-serialisable provenance kept in the manifest.
            settings: flat ``KEY -> value`` of what shapes the rows
                (:func:`.settings.build_settings`); recorded at the first start, a resume
                with other values is refused. Default: ``shard_size`` and ``dtype``.
            counter: forward counter already watching the models (see :func:`watch_models`).
            shard_id, num_shards: this array job's part: chunks c with c % num_shards ==
                shard_id (``output_dir`` is then the part's own directory, see :mod:`.parts`).
        """
        if not 0 <= shard_id < num_shards:
            raise ValueError(
                f"DATABASE_BUILD.ARRAY_JOB.SHARD_ID must be in [0, NUM_SHARDS={num_shards}), "
                f"got {shard_id}"
            )
        self.shard_id, self.num_shards = int(shard_id), int(num_shards)
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size (DATABASE_BUILD.BATCH_SIZE) must be >= 1, got {batch_size}")
        if not output_dir:
            raise ValueError("output_dir (DATABASE_BUILD.OUTPUT_DIR) is empty")
        self.encoder = encoder
        self.proposals = proposals
        self.output_dir = Path(output_dir).expanduser()
        self.shard_size = int(shard_size)
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.max_shards_per_run = int(max_shards_per_run)
        self.shard_delay_s = float(shard_delay_s)
        self.build_args = dict(build_args or {})
        if settings is None:
            settings = {"DATABASE_BUILD.SHARD_SIZE": self.shard_size, "DATABASE_BUILD.DTYPE": dtype}
        self.build_args["settings"] = dict(settings)
        self.counter = counter if counter is not None else ForwardCounter()
        self.progress = progress

    # ------------------------------------------------------------------ database handling
    def open_database(self, source: ImageSource, rank: int = 0) -> FeatureDatabase:
        """Create the database on rank 0, or check that an existing one was started with the same
        encoder, recipe, vocabulary and settings (rank 0 holds the folder's lock; see :meth:`build`)."""
        from .settings import check_resume

        recipe = self.encoder.recipe()

        def create_or_check() -> None:
            if (self.output_dir / "manifest.json").exists():
                db = FeatureDatabase.open(self.output_dir)
                if db.fingerprint != self.encoder.fingerprint:
                    raise ValueError(
                        f"{self.output_dir} holds a database built with encoder {db.fingerprint}; "
                        f"this build uses {self.encoder.fingerprint}. Choose another "
                        "DATABASE_BUILD.OUTPUT_DIR or the same CLIP"
                    )
                db.check_recipe(recipe)
                check_resume(db, self.build_args["settings"])
            FeatureDatabase.create(
                self.output_dir,
                recipe,
                source.vocabulary,
                source=source.name,
                build_args=self.build_args,
                dtype=self.dtype,
                exist_ok=True,
            )
            (self.output_dir / RECORD_DIR).mkdir(exist_ok=True)

        _on_rank0_then_share(rank, create_or_check)
        return FeatureDatabase.open(self.output_dir, expected_fingerprint=self.encoder.fingerprint)

    def chunk_done(self, chunk: int) -> bool:
        """Whether chunk ``chunk``'s shard is on disk (shards are renamed into place when complete)."""
        return (self.output_dir / "shards" / f"{chunk_prefix(chunk)}-000000.safetensors").is_file()

    # ------------------------------------------------------------------ per image
    def _class_names(self, source: ImageSource, record: ImageRecord) -> Sequence[str]:
        if isinstance(self.proposals, GroundTruthProposals):
            return source.dataset_classes
        return record.labels

    def _load(self, record: ImageRecord) -> Tuple[Optional[np.ndarray], Dict[str, Any]]:
        """Read one image; None (with the reason in the info) when it has no labels or is unreadable."""
        info: Dict[str, Any] = {
            "image_id": record.image_id,
            "path": record.path,
            "labels": list(record.labels),
            "status": "ok",
        }
        if not record.labels:
            info["status"] = "no_labels"
            return None, info
        try:
            image = read_image(record.path, data=record.data)
        except ImageReadError as e:
            logger.warning("skipping unreadable image %s (%s): %s", record.image_id, record.path, e)
            info["status"], info["error"] = "unreadable", f"{type(e).__name__}: {e}"
            return None, info
        return image, info

    def _prepare(
        self,
        image: np.ndarray,
        class_names: Sequence[str],
        props: Proposals,
        info: Dict[str, Any],
        vocab_index: Dict[str, int],
    ) -> Optional[Dict[str, Any]]:
        """One image's proposals in database labels, plus its CLIP input: the pending work of
        :meth:`_embed_batch`, or None when the image yields no rows."""
        if props.labels is None:
            raise ValueError(
                f"{type(self.proposals).__name__} gives no class hints; a database needs labelled "
                "masks (GroundingDinoSamProposals or GroundTruthProposals)"
            )
        names = [class_names[int(i)] for i in props.labels.tolist()]
        keep = torch.tensor([n in vocab_index for n in names], dtype=torch.bool)
        props = props.select(keep) if len(props) else props
        names = [n for n, k in zip(names, keep.tolist()) if k]
        info["undetected"] = sorted(set(info["labels"]) - set(names))
        info["segments"] = len(props)
        if len(props) == 0:
            return None
        x, resized = self.encoder.preprocess(image)
        labels = [vocab_index[n] for n in names]
        return {"x": x, "resized": resized, "props": props, "labels": labels, "info": info}

    def _embed_batch(self, batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """One CLIP forward for images with equal input sizes, then each image's mask pooling.

        Returns per image its rows (empty when no mask survives at the CLIP resolution).
        """
        dense_maps = self.encoder.dense_features(torch.stack([p["x"] for p in batch]))
        out = []
        for pending, dense in zip(batch, dense_maps):
            props, x = pending["props"], pending["x"]
            features, valid = self.encoder.embed_masks(
                dense, props.masks, pending["resized"], tuple(x.shape[-2:])
            )
            pending["info"]["dropped_small"] = int((~valid).sum())
            if not valid.any():
                out.append({})
                continue
            features = features.cpu().numpy()
            out.append({
                "features": features.astype(np.float32),
                "labels": np.asarray([l for l, v in zip(pending["labels"], valid.tolist()) if v], dtype=np.int64),
                "boxes": props.boxes[valid].numpy().astype(np.float32),
                "mask_areas": props.masks[valid].flatten(1).sum(1).numpy().astype(np.float32),
                "scores": props.scores[valid].numpy().astype(np.float32),
                "mask_rles": [encode_mask_rle(m) for m in props.masks[valid].numpy()],
                "sources": [str(pending["info"]["path"])] * int(valid.sum()),
            })
        return out

    # ------------------------------------------------------------------ per chunk
    def build_chunk(
        self,
        db: FeatureDatabase,
        source: ImageSource,
        chunk: int,
        records: List[ImageRecord],
        vocab_index: Dict[str, int],
        num_chunks: int = 0,
    ) -> Dict[str, Any]:
        """Process one chunk, write its record JSON, then its shard; returns the record.

        ``num_chunks`` (the build's total, kept in the record) lets ``repair`` tell a complete
        set of shards from a build that stopped early."""
        start = time.perf_counter()
        before = Counter(self.counter.snapshot())
        calls_before = Counter(self.counter.calls_snapshot())
        seconds_before = Counter(self.counter.seconds_snapshot())
        parts: List[Dict[str, Any]] = []
        ids: List[str] = []
        infos = []
        batch: List[Dict[str, Any]] = []

        def flush() -> None:
            for pending, rows in zip(batch, self._embed_batch(batch) if batch else []):
                if rows:
                    parts.append(rows)
                    ids.extend([pending["info"]["image_id"]] * len(rows["labels"]))
            batch.clear()

        for first in range(0, len(records), self.batch_size):
            window = records[first : first + self.batch_size]
            loaded = [self._load(record) for record in window]
            infos += [info for _, info in loaded]
            todo = [(r, image, info) for r, (image, info) in zip(window, loaded) if image is not None]
            if not todo:
                continue
            class_names = [self._class_names(source, r) for r, _, _ in todo]
            proposals = self.proposals.propose_batch(
                [image for _, image, _ in todo], class_names, [r.dataset_dict for r, _, _ in todo]
            )
            for (_, image, info), names, props in zip(todo, class_names, proposals):
                pending = self._prepare(image, names, props, info, vocab_index)
                if pending is None:
                    continue
                if batch and (
                    pending["x"].shape != batch[0]["x"].shape or len(batch) >= self.batch_size
                ):
                    flush()
                batch.append(pending)
        flush()
        forwards = Counter(self.counter.snapshot())
        forwards.subtract(before)
        calls = Counter(self.counter.calls_snapshot())
        calls.subtract(calls_before)
        model_seconds = Counter(self.counter.seconds_snapshot())
        model_seconds.subtract(seconds_before)
        chunk_record = {
            "chunk": chunk,
            "num_chunks": num_chunks,
            "images": infos,
            "forwards": {k: v for k, v in forwards.items() if v},
            "calls": {k: v for k, v in calls.items() if v},
            "model_seconds": {k: v for k, v in model_seconds.items() if v > 0},
            "seconds": time.perf_counter() - start,
        }
        atomic_write_json(
            self.output_dir / RECORD_DIR / f"{chunk_prefix(chunk)}.json", chunk_record
        )
        dim = db.embed_dim
        cat = lambda key, shape: (
            np.concatenate([p[key] for p in parts]) if parts else np.zeros(shape, np.float32)
        )  # noqa: E731
        db.append(
            cat("features", (0, dim)),
            cat("labels", (0,)).astype(np.int64),
            ids,
            boxes=cat("boxes", (0, 4)),
            mask_areas=cat("mask_areas", (0,)),
            scores=cat("scores", (0,)),
            sources=[s for p in parts for s in p["sources"]],
            mask_rles=[r for p in parts for r in p["mask_rles"]],
            shard_prefix=chunk_prefix(chunk),
            update_manifest=False,
        )
        return chunk_record

    # ------------------------------------------------------------------ whole build
    def build(
        self,
        source: ImageSource,
        *,
        rank: int = 0,
        world_size: int = 1,
        exclude_ids: Optional[Set[str]] = None,
    ) -> Optional[Dict[str, Any]]:
        """Build this rank's chunks; rank 0 then lists all shards in the manifest and writes the
        build report. Returns the report on rank 0 (None elsewhere, or when MAX_SHARDS_PER_RUN
        stopped the run before the end).

        Rank 0 holds the folder's lock (:class:`~retclip.retrieval.safedir.DatabaseLock`) for the
        whole build: a second builder is refused, naming this one's host and pid.

        Args:
            exclude_ids: image ids to leave out (images already in a database being added to).
        """
        if isinstance(self.proposals, GroundTruthProposals) and not hasattr(
            source, "dataset_classes"
        ):
            raise ValueError(
                "GroundTruthProposals need a dataset source (DATABASE_BUILD.SOURCE.TYPE 'dataset')"
            )
        lock = DatabaseLock(self.output_dir)
        _on_rank0_then_share(rank, lock.acquire)
        try:
            return self._build_locked(source, rank, world_size, exclude_ids)
        finally:
            if rank == 0:
                lock.release()

    def _build_locked(
        self, source: ImageSource, rank: int, world_size: int, exclude_ids: Optional[Set[str]]
    ) -> Optional[Dict[str, Any]]:
        from .report import write_build_report

        db = self.open_database(source, rank)
        vocab_index = {name: i for i, name in enumerate(source.vocabulary)}
        chunks = source.chunks(self.shard_size, exclude_ids)
        part = part_chunks(len(chunks), self.shard_id, self.num_shards)
        mine = part[rank::world_size]
        todo = [c for c in mine if not self.chunk_done(c)]
        # Streamed chunks (webdataset tars) are not counted before they are read.
        total = sum(len(chunks[c]) for c in mine if isinstance(chunks[c], list))
        done_images = total - sum(len(chunks[c]) for c in todo if isinstance(chunks[c], list))
        logger.info(
            "rank %d/%d: %d of %d chunks to build (%d images, %d already done) into %s",
            rank,
            world_size,
            len(todo),
            len(mine),
            total - done_images,
            done_images,
            self.output_dir,
        )
        finished = True
        bar = self._progress_bar(total, done_images, rank)
        start, processed = time.perf_counter(), 0
        for n, c in enumerate(todo):
            if self.max_shards_per_run and n >= self.max_shards_per_run:
                finished = False
                logger.info("rank %d: stopping after %d shards (MAX_SHARDS_PER_RUN)", rank, n)
                break
            records = list(chunks[c])
            self.build_chunk(db, source, c, records, vocab_index, len(chunks))
            processed += len(records)
            if bar is not None:
                bar.update(len(records))
                bar.set_postfix(img_s=f"{processed / max(time.perf_counter() - start, 1e-9):.2f}")
            if self.shard_delay_s:
                time.sleep(self.shard_delay_s)
        if bar is not None:
            bar.close()
        _barrier()
        if rank != 0 or not finished:
            return None
        if not all(self.chunk_done(c) for c in part):
            logger.info(
                "some chunks are still missing (other runs stopped early); manifest not refreshed"
            )
            return None
        db.refresh_manifest(remove_partial_writes=True)  # writes cut by a kill
        write_label_array(db)
        return write_build_report(self.output_dir, source, num_chunks=len(chunks))

    def _progress_bar(self, total: int, initial: int, rank: int):
        if not self.progress or rank != 0:
            return None
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, unit="img", desc="database build", dynamic_ncols=True
        )
