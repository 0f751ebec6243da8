"""Nearest-neighbour index backends over L2-normalised features (inner product = cosine).

Backends, picked by name from :data:`INDEX_TYPES` (``MODEL.RETCLIP.INDEX.TYPE``):

* ``exact``: torch matmul + topk, on the device of ``IndexConfig.device`` (CUDA when asked for);
  exact, no build, the default (faster than any approximate index below ~1e6 vectors on a GPU).
* ``flat``: FAISS ``IndexFlatIP``; exact; on all GPUs when ``use_gpu`` and FAISS sees a GPU.
* ``hnsw``: FAISS ``IndexHNSWFlat`` (M links, efSearch); approximate; CPU only in FAISS.
* ``ivfpq``: FAISS ``IndexIVFPQ`` (nlist lists, pq_m bytes per vector, nprobe) wrapped in
  ``IndexRefine`` over a float16 ``IndexScalarQuantizer``, which re-ranks rerank_factor * k
  candidates with inner products of the float16 rows (plain PQ at 64 B plateaus near 0.47
  recall@10 in 768 dims). float16 re-rank storage is the database's own storage precision and
  half the memory of ``IndexRefineFlat``'s float32. The coarse quantiser and PQ are trained on at
  most ``train_size`` rows drawn with ``train_seed`` (:func:`training_rows`), so a build can
  stream the rows shard by shard; see :mod:`.index_build`. Kept on CPU: moving the refine
  wrapper to GPU is not attempted here.

Search contract (every backend): ``search(queries (N, D), k)`` returns ``(scores, ids)``, both
(N, k) torch tensors on the queries' device, scores float32 cosine similarities sorted
descending, ids int64 row numbers of the added features. Slots without a neighbour (k larger than
the index, or an approximate index that found fewer than k candidates) hold id -1 and score -inf.

Plain NumPy/PyTorch/FAISS: no detectron2 import. torch is imported on first use (``exact`` index,
search results), so building and opening a FAISS index runs in a process without torch (its import
alone is ~0.5 GB of resident memory: tools/build_index.py, inspect_database.py).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "IndexConfig",
    "FeatureIndex",
    "ExactIndex",
    "FaissFlatIndex",
    "FaissHNSWIndex",
    "FaissIVFPQIndex",
    "INDEX_TYPES",
    "register_index",
    "build_index",
    "normalize_rows",
    "training_rows",
]

ArrayLike = Union[np.ndarray, "Tensor"]


def _torch():
    import torch

    return torch


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (none exists before it is)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass
class IndexConfig:
    """Index settings, mirroring ``MODEL.RETCLIP.INDEX.*`` (see :meth:`from_cfg`).

    Attributes:
        type: a name in :data:`INDEX_TYPES`.
        hnsw_m: HNSW links per node (M).
        ef_search: HNSW candidate list size at search (efSearch).
        ef_construction: HNSW candidate list size at build (efConstruction).
        nlist: IVF inverted lists; lowered to n // 39 when fewer vectors are added.
        nprobe: IVF lists visited per query.
        pq_m: PQ sub-quantisers (bytes per vector); must divide the dim.
        rerank_factor: IVF-PQ candidates re-ranked exactly per requested neighbour.
        train_size: IVF-PQ trains on at most this many rows, a sample drawn with ``train_seed``.
        train_seed: seed of that sample.
        mmap: load a cached index memory-mapped (FAISS ``IO_FLAG_MMAP_IFC``: the re-rank rows
            stay on disk until a search touches them), so a database larger than RAM opens.
        use_gpu: use FAISS GPUs when ``faiss.get_num_gpus() > 0`` (flat only).
        device: torch device of the ``exact`` backend ("cpu", "cuda", "cuda:1").
        query_block: queries per matmul block in ``exact`` (bounds the (block, N) score matrix).
    """

    type: str = "exact"
    hnsw_m: int = 32
    ef_search: int = 128
    ef_construction: int = 80
    nlist: int = 1024
    nprobe: int = 8
    pq_m: int = 64
    rerank_factor: int = 10
    train_size: int = 100_000
    train_seed: int = 0
    mmap: bool = True
    use_gpu: bool = True
    device: str = "cpu"
    query_block: int = 1024

    @classmethod
    def from_cfg(cls, cfg: Any, device: str = "cpu") -> "IndexConfig":
        """From a detectron2 config's ``MODEL.RETCLIP.INDEX`` node (plain attribute access)."""
        node = cfg.MODEL.RETCLIP.INDEX
        return cls(
            type=node.TYPE, hnsw_m=node.HNSW_M, ef_search=node.HNSW_EF_SEARCH,
            ef_construction=node.HNSW_EF_CONSTRUCTION,
            nlist=node.IVF_NLIST, nprobe=node.IVF_NPROBE, pq_m=node.PQ_M,
            rerank_factor=node.RERANK_FACTOR, train_size=node.TRAIN_SIZE,
            train_seed=node.TRAIN_SEED, mmap=node.MMAP, use_gpu=node.USE_GPU, device=device,
        )

    def build_params(self) -> Dict[str, Any]:
        """Settings that change a built index (its cache key); search-time ones excluded."""
        keys = {
            "hnsw": ("hnsw_m", "ef_construction"),
            "ivfpq": ("nlist", "pq_m", "train_size", "train_seed"),
        }
        d = asdict(self)
        extra = {"refine": "fp16"} if self.type == "ivfpq" else {}
        return {"type": self.type, **{k: d[k] for k in keys.get(self.type, ())}, **extra}


def training_rows(num_rows: int, train_size: int, seed: int) -> np.ndarray:
    """Sorted row numbers of the seeded training sample: all rows when there are few enough.

    The one rule for both an in-memory ``add`` and the streaming build, so both train alike.
    """
    if train_size <= 0:
        raise ValueError(
            f"train_size (MODEL.RETCLIP.INDEX.TRAIN_SIZE) must be positive, got {train_size}"
        )
    if num_rows <= train_size:
        return np.arange(num_rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_rows, size=train_size, replace=False)).astype(np.int64)


def normalize_rows(x: ArrayLike) -> np.ndarray:
    """(N, D) float32 C-contiguous NumPy copy with unit-norm rows (zero rows stay zero)."""
    if is_tensor(x):
        x = x.detach().to("cpu", _torch().float32).numpy()
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise ValueError(f"expected an (N, D) array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _finish(scores: np.ndarray, ids: np.ndarray, device: torch.device) -> Tuple[Tensor, Tensor]:
    torch = _torch()
    scores = scores.astype(np.float32, copy=True)
    ids = ids.astype(np.int64, copy=False)
    scores[ids < 0] = -np.inf
    return torch.from_numpy(scores).to(device), torch.from_numpy(ids).to(device)


class FeatureIndex:
    """Base class: ``add`` rows once (or in blocks), then ``search`` many times."""

    #: True when building costs enough that the index is worth saving beside the database.
    cacheable = False

    def __init__(self, config: IndexConfig, dim: int):
        if dim <= 0:
            raise ValueError(f"index dim must be positive, got {dim}")
        self.config = config
        self.dim = dim

    @property
    def ntotal(self) -> int:
        raise NotImplementedError

    def add(self, features: ArrayLike) -> None:
        """Add (N, D) features; rows are L2-normalised here. Ids continue from ``ntotal``."""
        raise NotImplementedError

    def _search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _check_search(self, queries: ArrayLike, k: int) -> None:
        if self.ntotal == 0:
            raise ValueError(
                f"cannot search an empty {type(self).__name__}: the feature database has no "
                "vectors (build it, or check the database path)"
            )
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (N, {self.dim}), got {tuple(queries.shape)}")

    def search(self, queries: ArrayLike, k: int) -> Tuple[Tensor, Tensor]:
        """Top-k by cosine similarity; see the module docstring for the contract.

        Args:
            queries: (N, D) tensor or array (normalised here).
            k: neighbours per query; may exceed ``ntotal`` (extra slots: id -1, score -inf).

        Returns:
            scores (N, k) float32 and ids (N, k) int64, on the queries' device.
        """
        self._check_search(queries, k)
        torch = _torch()
        device = queries.device if is_tensor(queries) else torch.device("cpu")
        if queries.shape[0] == 0:
            empty = torch.zeros(0, k, device=device)
            return empty, torch.zeros(0, k, dtype=torch.long, device=device)
        scores, ids = self._search(normalize_rows(queries), k)
        return _finish(scores, ids, device)


class ExactIndex(FeatureIndex):
    """Exact search by torch matmul + topk on ``config.device``."""

    def __init__(self, config: IndexConfig, dim: int):
        super().__init__(config, dim)
        torch = _torch()
        self.device = torch.device(config.device)
        self.features = torch.zeros(0, dim, device=self.device)

    @property
    def ntotal(self) -> int:
        return int(self.features.shape[0])

    def add(self, features: ArrayLike) -> None:
        torch = _torch()
        rows = torch.from_numpy(normalize_rows(features)).to(self.device)
        if rows.shape[1] != self.dim:
            raise ValueError(f"features must have {self.dim} columns, got {rows.shape[1]}")
        self.features = torch.cat([self.features, rows])

    def search(self, queries: ArrayLike, k: int) -> Tuple[Tensor, Tensor]:
        self._check_search(queries, k)
        torch = _torch()
        out_device = queries.device if is_tensor(queries) else torch.device("cpu")
        q = torch.as_tensor(queries).to(self.device, torch.float32)
        q = torch.nn.functional.normalize(q, dim=1)
        kk = min(k, self.ntotal)
        scores = torch.full((q.shape[0], k), float("-inf"), device=self.device)
        ids = torch.full((q.shape[0], k), -1, dtype=torch.long, device=self.device)
        for start in range(0, q.shape[0], max(1, self.config.query_block)):
            block = q[start : start + self.config.query_block] @ self.features.T
            top_scores, top_ids = block.topk(kk, dim=1)
            scores[start : start + block.shape[0], :kk] = top_scores
            ids[start : start + block.shape[0], :kk] = top_ids
        return scores.to(out_device), ids.to(out_device)


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError(
            "FAISS index types need faiss: pip install faiss-cpu (or faiss-gpu on CUDA clusters); "
            "the 'exact' index type needs only torch"
        ) from e
    return faiss


def _gpu_count() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class FaissIndex(FeatureIndex):
    """Common FAISS plumbing: normalise, train on first add, search, set search-time params."""

    def __init__(self, config: IndexConfig, dim: int):
        super().__init__(config, dim)
        self.index: Any = None

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else int(self.index.ntotal)

    def _make(self, n_train: int) -> Any:
        raise NotImplementedError

    def set_search_params(self) -> None:
        """Apply search-time settings (also after loading a saved index)."""

    def add(self, features: ArrayLike) -> None:
        x = normalize_rows(features)
        if x.shape[1] != self.dim:
            raise ValueError(f"features must have {self.dim} columns, got {x.shape[1]}")
        if self.index is None:
            self._train_normalized(
                x[training_rows(x.shape[0], self.config.train_size, self.config.train_seed)]
            )
        self.index.add(x)
        self.set_search_params()

    def train(self, sample: ArrayLike) -> None:
        """Create the empty index and train it (when it needs training) on ``sample`` rows."""
        self._train_normalized(normalize_rows(sample))

    def _train_normalized(self, x: np.ndarray) -> None:
        self.index = self._make(x.shape[0])
        if not self.index.is_trained:
            logger.info("training %s on %d vectors", type(self).__name__, x.shape[0])
            self.index.train(x)
        self.set_search_params()

    def reserve(self, num_rows: int) -> None:
        """Allocate storage for ``num_rows`` rows now, so growing never copies it (peak memory)."""

    def merge_from(self, other: "FaissIndex", id_offset: int) -> None:
        """Append the rows of ``other`` (same trained structure), ids shifted by ``id_offset``."""
        raise ValueError(
            f"index type {self.config.type!r} cannot merge indexes filled in parallel; "
            "use one worker (or type 'ivfpq')"
        )

    def _search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)

    def save(self, path: str) -> None:
        _faiss().write_index(self.index, path)

    def load(self, path: str) -> None:
        """Read a saved index; memory-mapped when ``config.mmap`` (flat codes stay on disk)."""
        faiss = _faiss()
        flags = faiss.IO_FLAG_MMAP_IFC if self.config.mmap else 0
        self.index = faiss.read_index(path, flags)
        if self.index.d != self.dim:
            raise ValueError(f"index file {path} has dim {self.index.d}, expected {self.dim}")
        self.set_search_params()


class FaissFlatIndex(FaissIndex):
    """Exact FAISS inner-product search (``IndexFlatIP``), on GPUs when available and asked for."""

    def _make(self, n_train: int) -> Any:
        faiss = _faiss()
        index = faiss.IndexFlatIP(self.dim)
        if self.config.use_gpu and _gpu_count() > 0:
            logger.info("flat index on %d GPU(s)", _gpu_count())
            index = faiss.index_cpu_to_all_gpus(index)
        return index


class FaissHNSWIndex(FaissIndex):
    """HNSW graph (``IndexHNSWFlat``, inner product); approximate, CPU."""

    cacheable = True

    def _make(self, n_train: int) -> Any:
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.config.ef_construction
        return index

    def set_search_params(self) -> None:
        self.index.hnsw.efSearch = self.config.ef_search


class FaissIVFPQIndex(FaissIndex):
    """IVF-PQ with re-ranking of rerank_factor * k candidates on float16 rows (``IndexRefine``)."""

    cacheable = True

    def _make(self, n_train: int) -> Any:
        faiss = _faiss()
        if self.dim % self.config.pq_m:
            raise ValueError(f"pq_m={self.config.pq_m} must divide the feature dim {self.dim}")
        if n_train < 256:
            raise ValueError(
                f"ivfpq needs at least 256 vectors to train its 8-bit codebooks, got {n_train}; "
                "use index type 'exact' or 'flat' for small databases"
            )
        nlist = max(1, min(self.config.nlist, n_train // 39))
        if nlist != self.config.nlist:
            logger.warning("ivfpq: nlist lowered from %d to %d for %d training vectors",
                           self.config.nlist, nlist, n_train)
        quantizer = faiss.IndexFlatIP(self.dim)
        base = faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.config.pq_m, 8,
                                faiss.METRIC_INNER_PRODUCT)
        refine = faiss.IndexScalarQuantizer(
            self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        # The refine wrapper must wrap the base index before anything is added. FAISS's Python
        # wrappers keep the quantizer, base and refine alive as references of their owners.
        return faiss.IndexRefine(base, refine)

    def _parts(self) -> Tuple[Any, Any]:
        faiss = _faiss()
        base, refine = self.index.base_index, self.index.refine_index
        return faiss.downcast_index(base), faiss.downcast_index(refine)

    def reserve(self, num_rows: int) -> None:
        _, refine = self._parts()
        codes = refine.codes
        used = codes.size()
        codes.resize(num_rows * refine.code_size)  # std::vector keeps this capacity ...
        codes.resize(used)  # ... when shrunk back, so later adds do not reallocate

    def merge_from(self, other: "FaissIndex", id_offset: int) -> None:
        if not isinstance(other, FaissIVFPQIndex) or other.index is None:
            raise ValueError("can only merge another filled FaissIVFPQIndex")
        base, refine = self._parts()
        other_base, other_refine = other._parts()
        if refine.ntotal != id_offset:
            raise ValueError(
                f"parts must be merged in row order: index holds {refine.ntotal} rows, the next "
                f"part starts at row {id_offset}"
            )
        base.merge_from(other_base, id_offset)
        refine.merge_from(other_refine, 0)
        self.index.ntotal = base.ntotal

    def set_search_params(self) -> None:
        faiss = _faiss()
        faiss.extract_index_ivf(self.index).nprobe = self.config.nprobe
        self.index.k_factor = float(self.config.rerank_factor)


IndexBuilder = Callable[[IndexConfig, int], FeatureIndex]


class IndexRegistry(Dict[str, IndexBuilder]):
    """Index types by name. Each entry is called as ``builder(config: IndexConfig, dim: int)``
    and returns an empty :class:`FeatureIndex`; rows go in with ``add`` and come out with
    ``search(queries, k) -> (scores, ids)``."""

    def get_builder(self, name: str) -> IndexBuilder:
        if name not in self:
            raise KeyError(f"unknown index type {name!r}; valid: {sorted(self)}")
        return self[name]


#: The registry of index backends (see :class:`IndexRegistry`).
INDEX_TYPES = IndexRegistry(
    exact=ExactIndex, flat=FaissFlatIndex, hnsw=FaissHNSWIndex, ivfpq=FaissIVFPQIndex
)


def register_index(name: str) -> Callable[[IndexBuilder], IndexBuilder]:
    """Decorator adding a backend to :data:`INDEX_TYPES` under ``name``."""

    def deco(builder: IndexBuilder) -> IndexBuilder:
        if name in INDEX_TYPES:
            raise KeyError(f"index type {name!r} is already registered")
        INDEX_TYPES[name] = builder
        return builder

    return deco


def build_index(config: IndexConfig, dim: int) -> FeatureIndex:
    """An empty index of ``config.type``; KeyError lists the valid types."""
    return INDEX_TYPES.get_builder(config.type)(config, dim)
