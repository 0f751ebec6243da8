"""Retrieval path of RetCLIP: feature database, index backends, scoring, label matching.

Plain PyTorch/NumPy/FAISS with no detectron2 import (checked by tests/retrieval/test_imports.py),
so databases can be built, inspected and searched without the segmentation stack. Names are
imported lazily: building or opening a database and its FAISS index does not import torch.
"""
from importlib import import_module
from typing import Any

#: public name -> submodule; imported on first access, so ``retclip.retrieval.index_build`` or
#: ``FeatureDatabase`` do not load torch (the scoring and search paths do, when used).
_EXPORTS = {
    "CorruptShardError": "database",
    "FeatureDatabase": "database",
    "ShardData": "database",
    "EncoderFingerprint": "fingerprint",
    "INDEX_TYPES": "index",
    "FeatureIndex": "index",
    "IndexConfig": "index",
    "build_index": "index",
    "register_index": "index",
    "LabelMatching": "label_matching",
    "match_labels": "label_matching",
    "RetrievalConfig": "pipeline",
    "RetrievalOutput": "pipeline",
    "RetrievalScorer": "pipeline",
    "resolve_database_path": "pipeline",
    "AGGREGATIONS": "scoring",
    "retrieval_scores": "scoring",
    "DatabaseRetriever": "search",
    "RetrievalResult": "search",
    "concat_queries": "search",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AGGREGATIONS",
    "CorruptShardError",
    "DatabaseRetriever",
    "EncoderFingerprint",
    "FeatureDatabase",
    "FeatureIndex",
    "INDEX_TYPES",
    "IndexConfig",
    "LabelMatching",
    "RetrievalConfig",
    "RetrievalOutput",
    "RetrievalResult",
    "RetrievalScorer",
    "ShardData",
    "build_index",
    "concat_queries",
    "match_labels",
    "register_index",
    "resolve_database_path",
    "retrieval_scores",
]
