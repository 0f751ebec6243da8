"""The on-disk feature database: segment features with class labels, built once, searched often.

A database is a directory::

    manifest.json            schema version, encoder fingerprint, embedding recipe (resize,
                             mean/std, padding, dense map, pooling, weights hash), vocabulary
                             (with synonyms), per-class counts, source, build arguments, shards
    shards/<prefix>-<n>.safetensors   features (N, D) float16/float32, L2-normalised at append;
                             labels (N,) int64; image_index (N,) int64 into the shard's image ids
                             (JSON in the safetensors metadata); boxes (N, 4) float32 (x0, y0, x1,
                             y1); mask_areas (N,) float32; scores (N,) float32 (detector score).
                             Boxes, areas and scores not given at append are stored as NaN.

safetensors cannot execute code on load. Every write goes to a temporary file and is renamed into
place (os.replace); the manifest is written after the shard it lists. Shard names are
``<prefix>-<n:06d>``: each distributed rank appends with its own prefix (``rank3``) and
``update_manifest=False``, and rank 0 calls :meth:`FeatureDatabase.refresh_manifest` once all ranks
are done. :meth:`FeatureDatabase.image_ids` reads every complete shard on disk, listed or not, so a
killed build resumes where it stopped. Each listed shard's sha256 is kept in the manifest and
checked on read, so a truncated or altered shard is an error naming it.

Plain NumPy/safetensors: no detectron2 import.
"""
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from .fingerprint import RECIPE_FIELDS, EmbeddingRecipe, EncoderFingerprint
from .safedir import staged_directory
from .shards import (
    CorruptShardError,
    ShardData,
    atomic_write_bytes,
    atomic_write_json,
    bad_rows_message,
    concat_shards,
    decode_shard,
    encode_shard,
    non_finite_rows,
)

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureDatabase",
    "ShardData",
    "CorruptShardError",
    "SCHEMA_VERSION",
    "atomic_write_json",
]

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".safetensors"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_]+$")
_DTYPES = {"float16": np.float16, "float32": np.float32}
_ZERO_NORM = 1e-12

PathLike = Union[str, os.PathLike]


def _normalise_vocabulary(vocabulary: Sequence[Union[str, Sequence[str]]]) -> List[List[str]]:
    """Each class as a list of synonyms: "a, b" strings are split on commas and stripped."""
    out = []
    for i, entry in enumerate(vocabulary):
        names = entry.split(",") if isinstance(entry, str) else list(entry)
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise ValueError(f"vocabulary entry {i} ({entry!r}) has no name")
        out.append(names)
    return out


class FeatureDatabase:
    """A feature database directory; see the module docstring for the layout.

    Build with :meth:`create` then :meth:`append`; open an existing one with :meth:`open`.
    """

    def __init__(self, path: PathLike, manifest: Dict[str, Any]):
        self.path = Path(path)
        self._manifest = manifest
        self.fingerprint = EncoderFingerprint.from_dict(manifest["encoder"])
        recipe = manifest.get("recipe")
        where = str(self.path / MANIFEST_NAME)
        #: How the rows were embedded; None for databases built before recipes were recorded.
        self.recipe = None if recipe is None else EmbeddingRecipe.from_dict(recipe, where)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: PathLike,
        fingerprint: Union[EncoderFingerprint, EmbeddingRecipe],
        vocabulary: Sequence[Union[str, Sequence[str]]],
        *,
        source: str = "",
        build_args: Optional[Dict[str, Any]] = None,
        dtype: str = "float16",
        exist_ok: bool = False,
    ) -> "FeatureDatabase":
        """Create an empty database (a manifest, no shards).

        Args:
            path: directory to create.
            fingerprint: the encoder whose features will be stored; give its whole
                :class:`EmbeddingRecipe` so models can check it (a bare fingerprint is for tests).
            vocabulary: class names; each a list of synonyms or a "name, synonym" string.
            source: the dataset the features come from (free text, e.g. "ade20k_panoptic_train").
            build_args: JSON-serialisable arguments of the build, kept for provenance.
            dtype: "float16" or "float32" storage of features.
            exist_ok: open an existing database at ``path`` instead of failing, if it was built
                with the same encoder and vocabulary (the resumable-build case).
        """
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        path = Path(path).expanduser()
        vocab = _normalise_vocabulary(vocabulary)
        recipe = fingerprint if isinstance(fingerprint, EmbeddingRecipe) else None
        fingerprint = recipe.fingerprint if recipe is not None else fingerprint
        if (path / MANIFEST_NAME).exists():
            if not exist_ok:
                raise FileExistsError(f"a feature database already exists at {path}")
            db = cls.open(path, expected_fingerprint=fingerprint)
            if recipe is not None:
                db.check_recipe(recipe)
            if db.vocabulary != vocab:
                raise ValueError(f"database at {path} has a different vocabulary than requested")
            return db
        (path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "encoder": fingerprint.to_dict(),
            **({"recipe": recipe.to_dict()} if recipe is not None else {}),
            "embed_dim": fingerprint.embed_dim,
            "dtype": dtype,
            "vocabulary": vocab,
            "class_counts": [0] * len(vocab),
            "source": source,
            "build_args": dict(build_args or {}),
            "shards": [],
        }
        json.dumps(manifest)  # fail early on non-serialisable build_args
        atomic_write_json(path / MANIFEST_NAME, manifest)
        logger.info("created feature database %s (%d classes, %s)", path, len(vocab), fingerprint)
        return cls(path, manifest)

    @classmethod
    def open(
        cls, path: PathLike, expected_fingerprint: Optional[EncoderFingerprint] = None
    ) -> "FeatureDatabase":
        """Open a database; with ``expected_fingerprint`` a different encoder is an error."""
        path = Path(path).expanduser()
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no feature database at {path} (missing {MANIFEST_NAME})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt manifest {manifest_path}: {e}") from e
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"{manifest_path} has schema version {version!r}; this code reads {SCHEMA_VERSION}"
            )
        db = cls(path, manifest)
        if expected_fingerprint is not None:
            db.check_encoder(expected_fingerprint)
        stray = set(db._shard_files_on_disk()) - set(db.shard_names)
        if stray:
            logger.warning(
                "%s: %d shard(s) on disk are not in the manifest (unfinished build? rerun it, or "
                "run tools/inspect_database.py repair %s): %s",
                path, len(stray), path, sorted(stray)[:5],
            )
        return db

    def check_encoder(self, fingerprint: EncoderFingerprint) -> None:
        """Raise ValueError if this database was built with another encoder than ``fingerprint``."""
        if fingerprint != self.fingerprint:
            raise ValueError(
                f"feature database {self.path} was built with encoder {self.fingerprint}, but the "
                f"model uses {fingerprint}; rebuild the database with the model's CLIP"
            )

    def check_recipe(
        self,
        recipe: EmbeddingRecipe,
        *,
        allow_mismatch: bool = False,
        fields: Sequence[str] = RECIPE_FIELDS,
    ) -> List[Tuple[str, Any, Any]]:
        """Refuse rows embedded another way than ``recipe`` (see
        :func:`retclip.retrieval.recipe_check.check_database_recipe`)."""
        from .recipe_check import check_database_recipe

        return check_database_recipe(self, recipe, allow_mismatch=allow_mismatch, fields=fields)

    # ------------------------------------------------------------------ properties
    @property
    def vocabulary(self) -> List[List[str]]:
        """Classes, each a list of synonyms (first = display name)."""
        return [list(v) for v in self._manifest["vocabulary"]]

    @property
    def class_names(self) -> List[str]:
        return [v[0] for v in self._manifest["vocabulary"]]

    @property
    def embed_dim(self) -> int:
        return int(self._manifest["embed_dim"])

    @property
    def dtype(self) -> str:
        return str(self._manifest["dtype"])

    @property
    def class_counts(self) -> List[int]:
        return list(self._manifest["class_counts"])

    @property
    def shard_names(self) -> List[str]:
        """Shards listed in the manifest, in read order."""
        return [s["name"] for s in self._manifest["shards"]]

    @property
    def manifest(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self._manifest))

    def __len__(self) -> int:
        return sum(int(s["rows"]) for s in self._manifest["shards"])

    def content_hash(self) -> str:
        """sha256 over the encoder, vocabulary and shard hashes: changes iff the content does."""
        key = {
            "encoder": self._manifest["encoder"],
            "vocabulary": self._manifest["vocabulary"],
            "shards": [(s["name"], s["sha256"]) for s in self._manifest["shards"]],
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    # ------------------------------------------------------------------ writing
    def _shard_files_on_disk(self, prefix: Optional[str] = None) -> List[str]:
        shard_dir = self.path / SHARD_DIR
        if not shard_dir.is_dir():
            return []
        names = sorted(p.name[: -len(SHARD_SUFFIX)] for p in shard_dir.glob("*" + SHARD_SUFFIX))
        if prefix is not None:
            names = [n for n in names if n.rsplit("-", 1)[0] == prefix]
        return names

    def _validate_rows(
        self, features: np.ndarray, labels: np.ndarray, ids: List[str], where: str
    ) -> np.ndarray:
        if features.ndim != 2 or features.shape[1] != self.embed_dim:
            raise ValueError(
                f"features must have shape (N, {self.embed_dim}) for {self.path}, "
                f"got {features.shape}"
            )
        n = features.shape[0]
        if labels.shape != (n,) or len(ids) != n:
            raise ValueError(
                f"features ({n} rows), labels {labels.shape} and image_ids ({len(ids)}) must agree"
            )
        feats = features.astype(np.float32)
        bad = non_finite_rows(feats)
        if bad.size:
            images = sorted({ids[i] for i in bad[:10].tolist()})
            raise ValueError(
                f"{where}: NaN or infinite features at {bad_rows_message(bad)} (images {images}); "
                "not written"
            )
        norms = np.linalg.norm(feats, axis=1)
        bad = np.flatnonzero(norms < _ZERO_NORM)
        if bad.size:
            raise ValueError(f"{where}: zero-norm features at {bad_rows_message(bad)}; not written")
        num_classes = len(self._manifest["vocabulary"])
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            raise ValueError(
                f"{where}: labels outside [0, {num_classes}) at {bad_rows_message(bad)}: "
                f"{labels[bad[:10]].tolist()}"
            )
        return feats / norms[:, None]

    @staticmethod
    def _optional(values: Optional[np.ndarray], shape: tuple, name: str) -> np.ndarray:
        if values is None:
            return np.full(shape, np.nan, dtype=np.float32)
        arr = np.asarray(values, dtype=np.float32)
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        return arr

    @staticmethod
    def _provenance(values: Optional[Sequence[Any]], n: int, name: str) -> Optional[List[Any]]:
        if values is None:
            return None
        values = list(values)
        if len(values) != n:
            raise ValueError(f"{name} must have one entry per row ({n}), got {len(values)}")
        return values

    def append(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        image_ids: Sequence[Union[str, int]],
        *,
        boxes: Optional[np.ndarray] = None,
        mask_areas: Optional[np.ndarray] = None,
        scores: Optional[np.ndarray] = None,
        sources: Optional[Sequence[Optional[str]]] = None,
        mask_rles: Optional[Sequence[Optional[Dict[str, Any]]]] = None,
        shard_prefix: str = "shard",
        update_manifest: bool = True,
    ) -> str:
        """Write one shard of rows. Features are L2-normalised before storage.

        Args:
            features: (N, D) array-like (NumPy or CPU tensor via np.asarray).
            labels: (N,) database class indices.
            image_ids: N ids of the source image of each row (str or int; stored as str).
            boxes: optional (N, 4) boxes; mask_areas, scores: optional (N,).
            sources, mask_rles: optional provenance for thumbnails: N source image paths and N
                COCO RLE masks ({"size": [h, w], "counts": str}); rows of one image id share
                one source path.
            shard_prefix: letters/digits/underscore; one per writer (e.g. "rank0").
            update_manifest: list the shard in the manifest now. Writers running in parallel
                pass False and one process calls :meth:`refresh_manifest` at the end.

        Returns:
            the new shard's name.

        Raises:
            ValueError: naming the rows with NaN/inf or zero-norm features, or bad labels.
        """
        if not _PREFIX_RE.match(shard_prefix):
            raise ValueError(f"shard_prefix must match {_PREFIX_RE.pattern}, got {shard_prefix!r}")
        features = np.asarray(features)
        labels = np.asarray(labels).astype(np.int64, copy=False)
        ids = [str(i) for i in image_ids]
        existing = self._shard_files_on_disk(shard_prefix)
        index = int(existing[-1].rsplit("-", 1)[1]) + 1 if existing else 0
        name = f"{shard_prefix}-{index:06d}"
        feats = self._validate_rows(features, labels, ids, f"shard {self.path / SHARD_DIR / name}")
        n = feats.shape[0]
        data = encode_shard(
            feats.astype(_DTYPES[self.dtype]), labels, ids,
            self._optional(boxes, (n, 4), "boxes"),
            self._optional(mask_areas, (n,), "mask_areas"),
            self._optional(scores, (n,), "scores"),
            sources=self._provenance(sources, n, "sources"),
            mask_rles=self._provenance(mask_rles, n, "mask_rles"),
        )
        atomic_write_bytes(self.path / SHARD_DIR / (name + SHARD_SUFFIX), data)
        if update_manifest:
            entry = self._shard_entry(name, data, labels)
            self._manifest["shards"].append(entry)
            counts = self._manifest["class_counts"]
            for label, count in entry["class_counts"].items():
                counts[int(label)] += count
            atomic_write_json(self.path / MANIFEST_NAME, self._manifest)
        logger.debug("appended %d rows to %s as %s", n, self.path, name)
        return name

    @staticmethod
    def _shard_entry(name: str, data: bytes, labels: np.ndarray) -> Dict[str, Any]:
        values, counts = np.unique(labels, return_counts=True)
        return {
            "name": name,
            "rows": int(labels.shape[0]),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "class_counts": {str(int(v)): int(c) for v, c in zip(values, counts)},
        }

    def refresh_manifest(self, remove_partial_writes: bool = False) -> None:
        """List every complete shard on disk in the manifest (after parallel writers finish).

        Args:
            remove_partial_writes: also delete temporary files of shard writes cut by a kill
                (only when no writer is running: the caller holds the folder's lock).
        """
        if remove_partial_writes:
            for stale in (self.path / SHARD_DIR).glob(".*.tmp"):
                stale.unlink()
        entries = []
        counts = [0] * len(self._manifest["vocabulary"])
        for name in self._shard_files_on_disk():
            data = (self.path / SHARD_DIR / (name + SHARD_SUFFIX)).read_bytes()
            shard = self._decode(name, data)
            entry = self._shard_entry(name, data, shard.labels)
            for label, count in entry["class_counts"].items():
                counts[int(label)] += count
            entries.append(entry)
        self._manifest["shards"] = entries
        self._manifest["class_counts"] = counts
        atomic_write_json(self.path / MANIFEST_NAME, self._manifest)
        logger.info("%s: manifest lists %d shards, %d rows", self.path, len(entries), len(self))

    # ------------------------------------------------------------------ reading
    def _decode(self, name: str, data: bytes) -> ShardData:
        return decode_shard(self.path / SHARD_DIR / (name + SHARD_SUFFIX), data)

    def read_shard(self, name: str, verify: bool = True) -> ShardData:
        """Read one shard; with ``verify`` its sha256 must match the manifest's."""
        where = self.path / SHARD_DIR / (name + SHARD_SUFFIX)
        if not where.is_file():
            raise FileNotFoundError(f"shard {where} listed in the manifest is missing")
        data = where.read_bytes()
        if verify:
            entry = next((s for s in self._manifest["shards"] if s["name"] == name), None)
            if entry is not None and hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise CorruptShardError(
                    f"shard {where} is truncated or altered ({len(data)} bytes, manifest says "
                    f"{entry['bytes']}; sha256 differs)"
                )
        return self._decode(name, data)

    def iter_shards(self, verify: bool = True) -> Iterator[ShardData]:
        """Yield the manifest's shards in order (scan in blocks without loading everything)."""
        for name in self.shard_names:
            yield self.read_shard(name, verify=verify)

    def load_all(self, verify: bool = True) -> ShardData:
        """All rows of all listed shards, concatenated in shard order (row i = index id i)."""
        parts = list(self.iter_shards(verify=verify))
        return concat_shards(parts, self.embed_dim, _DTYPES[self.dtype])

    def image_ids(self) -> Set[str]:
        """Ids of images with rows in any complete shard on disk (listed or not): for resuming."""
        done: Set[str] = set()
        for name in self._shard_files_on_disk():
            where = self.path / SHARD_DIR / (name + SHARD_SUFFIX)
            done.update(self._decode(name, where.read_bytes()).image_ids)
        return done

    def verify(self) -> List[str]:
        """Read every shard: a problem line for each listed shard that is missing, altered,
        corrupt or holds non-finite features, and for each shard on disk the manifest omits."""
        problems = []
        for name in self.shard_names:
            try:
                self.read_shard(name, verify=True)
            except (CorruptShardError, FileNotFoundError) as e:
                problems.append(str(e))
        for name in sorted(set(self._shard_files_on_disk()) - set(self.shard_names)):
            problems.append(
                f"shard {self.path / SHARD_DIR / (name + SHARD_SUFFIX)} is not in the manifest "
                f"(unfinished build? run tools/inspect_database.py repair {self.path})"
            )
        return problems

    def describe(self) -> Dict[str, Any]:
        """A summary for people: counts per class, dims, encoder, source, size on disk."""
        disk = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        names = self.class_names
        return {
            "path": str(self.path),
            "schema_version": self._manifest["schema_version"],
            "encoder": str(self.fingerprint),
            "recipe": self.recipe.to_dict() if self.recipe is not None else None,
            "embed_dim": self.embed_dim,
            "dtype": self.dtype,
            "num_vectors": len(self),
            "num_shards": len(self.shard_names),
            "num_classes": len(names),
            "class_counts": dict(zip(names, self.class_counts)),
            "empty_classes": [n for n, c in zip(names, self.class_counts) if c == 0],
            "source": self._manifest["source"],
            "build_args": self._manifest["build_args"],
            "disk_bytes": disk,
        }

    # ------------------------------------------------------------------ editing
    def merge(self, other: "FeatureDatabase", path: PathLike) -> "FeatureDatabase":
        """A new database at ``path`` with the rows of both; vocabularies joined by class name.

        ``path`` must not exist. The result is built in a hidden sibling folder and renamed into
        place when complete: a failure (a corrupt shard, a full disk) leaves nothing at ``path``.

        Classes are identified by their first name (case-insensitive); synonyms of a class in
        both are joined. Both databases must come from the same encoder.
        """
        self.check_encoder(other.fingerprint)
        if self.recipe is not None and other.recipe is not None:
            other.check_recipe(self.recipe)
        vocab = self.vocabulary
        key = {v[0].lower(): i for i, v in enumerate(vocab)}
        remap_other = np.zeros(len(other.vocabulary), dtype=np.int64)
        for j, names in enumerate(other.vocabulary):
            i = key.get(names[0].lower())
            if i is None:
                i = len(vocab)
                key[names[0].lower()] = i
                vocab.append(list(names))
            else:
                known = {n.lower() for n in vocab[i]}
                vocab[i] += [n for n in names if n.lower() not in known]
            remap_other[j] = i
        sources = [s for s in (self._manifest["source"], other._manifest["source"]) if s]
        with staged_directory(path) as staging:
            merged = FeatureDatabase.create(
                staging, (self.recipe if other.recipe is not None else None) or self.fingerprint,
                vocab, source=" + ".join(sources), dtype=self.dtype,
                build_args={"merged_from": [str(self.path), str(other.path)]},
            )
            for db, remap in ((self, None), (other, remap_other)):
                for shard in db.iter_shards():
                    labels = shard.labels if remap is None else remap[shard.labels]
                    merged._append_shard(shard, labels)
        return FeatureDatabase.open(path)

    def remove_classes(
        self, classes: Sequence[Union[int, str]], path: PathLike
    ) -> "FeatureDatabase":
        """A new database at ``path`` without the given classes (by index or first name); built
        beside ``path`` and renamed into place when complete, like :meth:`merge`."""
        names = [n.lower() for n in self.class_names]
        drop = set()
        for c in classes:
            if isinstance(c, str):
                if c.lower() not in names:
                    raise KeyError(f"class {c!r} is not in database {self.path}; have {names}")
                drop.add(names.index(c.lower()))
            elif not 0 <= int(c) < len(names):
                raise KeyError(f"class index {c} out of range [0, {len(names)}) in {self.path}")
            else:
                drop.add(int(c))
        keep = [i for i in range(len(names)) if i not in drop]
        remap = np.full(len(names), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        vocab = self.vocabulary
        with staged_directory(path) as staging:
            out = FeatureDatabase.create(
                staging, self.recipe or self.fingerprint, [vocab[i] for i in keep],
                source=self._manifest["source"], dtype=self.dtype,
                build_args={
                    # A builder's settings stay with the database it built: resuming a build
                    # into this edited copy would mix its rows (see database_builder.settings).
                    **{k: v for k, v in self._manifest["build_args"].items() if k != "settings"},
                    "removed_classes": sorted(drop),
                },
            )
            for shard in self.iter_shards():
                rows = remap[shard.labels] >= 0
                if rows.any():
                    sub = ShardData(
                        shard.features[rows], remap[shard.labels[rows]],
                        [i for i, r in zip(shard.image_ids, rows) if r], shard.boxes[rows],
                        shard.mask_areas[rows], shard.scores[rows],
                        sources=_rows_of(shard.sources, rows),
                        mask_rles=_rows_of(shard.mask_rles, rows),
                    )
                    out._append_shard(sub, sub.labels)
        return FeatureDatabase.open(path)

    def _append_shard(self, shard: ShardData, labels: np.ndarray) -> None:
        self.append(
            shard.features, labels, shard.image_ids, boxes=shard.boxes,
            mask_areas=shard.mask_areas, scores=shard.scores, sources=shard.sources,
            mask_rles=shard.mask_rles,
        )

    def delete(self) -> None:
        """Remove the database directory (used by tests and rebuilds)."""
        shutil.rmtree(self.path)


def _rows_of(values: Optional[List[Any]], rows: np.ndarray) -> Optional[List[Any]]:
    """The kept rows of an optional per-row list (None stays None)."""
    return None if values is None else [v for v, keep in zip(values, rows.tolist()) if keep]
