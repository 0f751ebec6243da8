"""Retrieval path of RetCLIP: feature database, index backends, scoring, label matching.

Plain PyTorch/NumPy/FAISS with no detectron2 import (checked by tests/retrieval/test_imports.py),
so databases can be built, inspected and searched without the segmentation stack.
"""
from .database import CorruptShardError, FeatureDatabase, ShardData
from .fingerprint import EncoderFingerprint
from .index import INDEX_TYPES, FeatureIndex, IndexConfig, build_index, register_index
from .label_matching import LabelMatching, match_labels
from .pipeline import RetrievalConfig, RetrievalOutput, RetrievalScorer, resolve_database_path
from .scoring import AGGREGATIONS, retrieval_scores
from .search import DatabaseRetriever, RetrievalResult, concat_queries

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
