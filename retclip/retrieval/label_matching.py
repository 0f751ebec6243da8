"""Database class names -> test vocabulary (RetCLIP §2.2: CLIP text cosine > 0.95, fallback DB).

For each database in order (primary first, then fallbacks), each database class is matched to a
test class:

1. by synonym: the names of both, split on commas and stripped, compared case-insensitively;
   with several candidate test classes the one sharing most synonyms wins (then the lowest
   index);
2. otherwise by CLIP text cosine: the best test class by the highest cosine over all synonym
   pairs, accepted when >= ``threshold``. Pairs in [``near_miss``, ``threshold``) are near misses.

A fallback database contributes only test classes that no earlier database covers. Test classes
covered by no database have no retrieval (the ensemble gives them gamma 0: CLIP alone). Every
match and near miss is logged and, with ``report_path``, written to a JSON report.

Text embeddings come from a caller-supplied ``embed_texts(List[str]) -> (len, D) Tensor`` (any
CLIP text tower, with whatever prompt templates the caller prefers), so this module needs no
model. Plain PyTorch: no detectron2 import.
"""
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .database import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["LabelMatch", "LabelMatching", "match_labels", "split_synonyms"]

Vocabulary = Sequence[Union[str, Sequence[str]]]
EmbedTexts = Callable[[List[str]], Tensor]


def split_synonyms(entry: Union[str, Sequence[str]]) -> List[str]:
    """"a, b" or ["a, b", "c"] -> ["a", "b", "c"] (stripped, empties dropped)."""
    parts = [entry] if isinstance(entry, str) else list(entry)
    return [s.strip() for p in parts for s in p.split(",") if s.strip()]


@dataclass
class LabelMatch:
    """One database class matched (or nearly matched) to a test class."""

    database: int
    db_index: int
    db_name: str
    test_index: int
    test_name: str
    method: str  # "synonym" or "clip"
    cosine: Optional[float] = None


@dataclass
class LabelMatching:
    """Result of :func:`match_labels`.

    Attributes:
        mappings: per database, (num_db_classes,) int64 test class index of each database
            class, -1 for none (apply as ``mapping[db_labels]``).
        has_retrieval: (K,) bool, test classes some database covers.
        source: per test class, the index of the database covering it, -1 for none.
        matches: accepted matches. near_misses: CLIP cosines in [near_miss, threshold).
        unmatched_db: per database, names of classes that map to no test class.
        missing: test class names found in no database (CLIP alone for them).
    """

    mappings: List[Tensor]
    has_retrieval: Tensor
    source: List[int]
    matches: List[LabelMatch] = field(default_factory=list)
    near_misses: List[LabelMatch] = field(default_factory=list)
    unmatched_db: List[List[str]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)

    def report(self) -> Dict[str, Any]:
        return {
            "num_test_classes": int(self.has_retrieval.numel()),
            "num_with_retrieval": int(self.has_retrieval.sum()),
            "source_per_test_class": self.source,
            "matches": [asdict(m) for m in self.matches],
            "near_misses": [asdict(m) for m in self.near_misses],
            "unmatched_db_classes": self.unmatched_db,
            "missing_test_classes": self.missing,
        }


def _synonym_match(db_syns: List[str], test_sets: List[set], allowed: List[bool]) -> int:
    names = {s.lower() for s in db_syns}
    best, best_overlap = -1, 0
    for t, syns in enumerate(test_sets):
        overlap = len(names & syns) if allowed[t] else 0
        if overlap > best_overlap:
            best, best_overlap = t, overlap
    return best


def _class_cosines(
    db_vocab: List[List[str]], test_vocab: List[List[str]], embed_texts: EmbedTexts
) -> Tensor:
    """(num_db, K) max cosine over synonym pairs."""
    texts = sorted({s for v in db_vocab + test_vocab for s in v})
    emb = embed_texts(texts)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"embed_texts returned shape {tuple(emb.shape)} for {len(texts)} texts")
    emb = torch.nn.functional.normalize(emb.float(), dim=-1)
    pos = {t: i for i, t in enumerate(texts)}
    sim = emb @ emb.T

    def rows(vocab: List[List[str]]) -> List[List[int]]:
        return [[pos[s] for s in v] for v in vocab]

    db_rows, test_rows = rows(db_vocab), rows(test_vocab)
    out = torch.empty(len(db_rows), len(test_rows))
    for i, dr in enumerate(db_rows):
        block = sim[dr]
        for t, tr in enumerate(test_rows):
            out[i, t] = block[:, tr].max()
    return out


def match_labels(
    test_vocabulary: Vocabulary,
    database_vocabularies: Sequence[Vocabulary],
    embed_texts: Optional[EmbedTexts] = None,
    threshold: float = 0.95,
    near_miss: float = 0.90,
    report_path: Optional[Union[str, os.PathLike]] = None,
) -> LabelMatching:
    """Map each database's classes to the test vocabulary (see the module docstring).

    Args:
        test_vocabulary: K test classes, each "name, synonym, ..." or a list of synonyms.
        database_vocabularies: vocabularies of the primary database, then fallbacks.
        embed_texts: text -> (len, D) embeddings; None disables the CLIP step (synonyms only).
        threshold: accept a CLIP match at cosine >= threshold.
        near_miss: log (and report) cosines in [near_miss, threshold).
        report_path: where to write the JSON report (atomically); None for none.

    Returns:
        a :class:`LabelMatching`.
    """
    if not 0.0 <= near_miss <= threshold <= 1.0:
        raise ValueError(f"need 0 <= near_miss <= threshold <= 1, got {near_miss}, {threshold}")
    test = [split_synonyms(v) for v in test_vocabulary]
    for t, syns in enumerate(test):
        if not syns:
            raise ValueError(f"test class {t} ({test_vocabulary[t]!r}) has no name")
    test_sets = [{s.lower() for s in syns} for syns in test]
    num_test = len(test)
    source = [-1] * num_test
    result = LabelMatching(mappings=[], has_retrieval=torch.zeros(num_test, dtype=torch.bool),
                           source=source)
    for d, vocab in enumerate(database_vocabularies):
        db = [split_synonyms(v) for v in vocab]
        allowed = [source[t] in (-1, d) for t in range(num_test)]
        mapping = torch.full((len(db),), -1, dtype=torch.long)
        for i, syns in enumerate(db):
            t = _synonym_match(syns, test_sets, allowed)
            if t >= 0:
                mapping[i] = t
                result.matches.append(LabelMatch(d, i, syns[0], t, test[t][0], "synonym"))
        todo = [i for i in range(len(db)) if mapping[i] < 0]
        if todo and embed_texts is not None and any(allowed):
            cos = _class_cosines([db[i] for i in todo], test, embed_texts)
            cos[:, [t for t in range(num_test) if not allowed[t]]] = -2.0
            best_cos, best_t = cos.max(1)
            for row, i in enumerate(todo):
                c, t = float(best_cos[row]), int(best_t[row])
                entry = LabelMatch(d, i, db[i][0], t, test[t][0], "clip", round(c, 6))
                if c >= threshold:
                    mapping[i] = t
                    result.matches.append(entry)
                elif c >= near_miss:
                    result.near_misses.append(entry)
        for t in mapping[mapping >= 0].tolist():
            source[t] = d
        result.mappings.append(mapping)
        result.unmatched_db.append([db[i][0] for i in range(len(db)) if mapping[i] < 0])
    result.has_retrieval = torch.tensor([s >= 0 for s in source], dtype=torch.bool)
    result.missing = [test[t][0] for t in range(num_test) if source[t] < 0]
    _log(result)
    if report_path is not None:
        atomic_write_json(report_path, result.report())
    return result


def _log(result: LabelMatching) -> None:
    for m in result.matches:
        logger.info("label match db%d %r -> %r (%s%s)", m.database, m.db_name, m.test_name,
                    m.method, "" if m.cosine is None else f", cosine {m.cosine:.4f}")
    for m in result.near_misses:
        logger.info("label near miss db%d %r ~ %r (cosine %.4f, below threshold)",
                    m.database, m.db_name, m.test_name, m.cosine)
    logger.info(
        "label matching: %d of %d test classes have retrieval; without (CLIP alone): %s",
        int(result.has_retrieval.sum()), result.has_retrieval.numel(), result.missing,
    )
