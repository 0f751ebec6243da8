"""Web-scale image sources: webdataset tar shards (as img2dataset writes them), streamed.

Each tar is one chunk of the build (one database shard): it is read front to back with the
``webdataset`` package when its chunk is built, never listed in advance, so a build over
thousands of tars starts at once and an array job touches only its own tars. A sample is an
image (``jpg``/``jpeg``/``png``/``webp``) plus its image-level labels, ``json`` (a list of names,
or an object with a ``labels`` list) or ``txt`` (one name per line, or ``;``-separated). The image
id is the sample's ``__key__``; records of a tar are sorted by it. Memory: the encoded images of
one tar (img2dataset's default 10k samples at 256 px is ~0.3 GB).

The vocabulary is ``SOURCE.CLASSES`` when given; otherwise a first pass reads the label files of
every tar (streaming past the images), which costs a full read of the data: give CLASSES for
large sets.
"""
from __future__ import annotations

import json
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Set

from .sources import ImageRecord, ImageSource

logger = logging.getLogger(__name__)

__all__ = ["WebDatasetSource", "expand_urls"]

_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def _webdataset():
    try:
        import webdataset
    except ImportError as e:
        raise ImportError(
            "DATABASE_BUILD.SOURCE.TYPE 'webdataset' needs the webdataset package: "
            "pip install webdataset==1.0.2"
        ) from e
    return webdataset


def expand_urls(urls: str) -> List[str]:
    """Space-separated brace patterns ("a/{000..002}.tar b.tar") -> tar urls, in order."""
    from braceexpand import braceexpand

    out = [u for pattern in str(urls).split() for u in braceexpand(pattern)]
    if not out:
        raise ValueError("DATABASE_BUILD.SOURCE.URLS is empty: give the webdataset tar shards")
    if len(set(out)) != len(out):
        raise ValueError(f"DATABASE_BUILD.SOURCE.URLS lists a tar twice: {sorted(out)[:5]}")
    return out


def _labels_of(sample: Dict[str, object], url: str) -> List[str]:
    key = sample.get("__key__")
    if "json" in sample:
        try:
            value = json.loads(sample["json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{url}: sample {key}: labels json is not JSON: {e}") from e
        if isinstance(value, dict):
            if "labels" not in value:
                raise ValueError(f"{url}: sample {key}: labels json object has no 'labels' key")
            value = value["labels"]
        if not isinstance(value, list):
            raise ValueError(f"{url}: sample {key}: labels json must be a list of names")
        return [str(v).strip() for v in value if str(v).strip()]
    if "txt" in sample:
        text = sample["txt"].decode("utf-8")
        return [t.strip() for line in text.splitlines() for t in line.split(";") if t.strip()]
    raise ValueError(f"{url}: sample {key} has no labels (json or txt); has {sorted(sample)}")


def _stream(url: str) -> Iterator[Dict[str, object]]:
    wds = _webdataset()
    yield from wds.WebDataset(url, shardshuffle=False, empty_check=False)


class _TarChunk:
    """The records of one tar, streamed each time it is iterated (not held between builds)."""

    def __init__(self, source: "WebDatasetSource", url: str, exclude: Optional[Set[str]]):
        self.source, self.url, self.exclude = source, url, exclude

    def __iter__(self) -> Iterator[ImageRecord]:
        records = []
        for sample in _stream(self.url):
            key = str(sample["__key__"])
            if self.exclude and key in self.exclude:
                continue
            image_key = next((k for k in _IMAGE_KEYS if k in sample), None)
            if image_key is None:
                raise ValueError(
                    f"{self.url}: sample {key} has no image ({'/'.join(_IMAGE_KEYS)})"
                )
            labels = self.source.in_vocabulary(_labels_of(sample, self.url))
            records.append(ImageRecord(key, f"{self.url}#{key}.{image_key}", labels,
                                       data=sample[image_key]))
        return iter(self.source._finish(records, 0))


class WebDatasetSource(ImageSource):
    """Tar shards of images with image-level labels; see the module docstring."""

    def __init__(self, urls: str, *, classes: Sequence[str] = ()) -> None:
        self.urls = expand_urls(urls)
        more = f" (+{len(self.urls) - 1})" if len(self.urls) > 1 else ""
        self.name = f"webdataset:{self.urls[0]}{more}"
        if classes:
            self.vocabulary = [c.strip() for c in classes]
        else:
            logger.info("webdataset: no SOURCE.CLASSES; reading the labels of %d tars",
                        len(self.urls))
            union = {n for url in self.urls for s in _stream(url) for n in _labels_of(s, url)}
            self.vocabulary = sorted(union)
        self._by_name = {v.split(",")[0].strip().lower(): v for v in self.vocabulary}
        self.report = {}

    def in_vocabulary(self, labels: Sequence[str]) -> tuple:
        """Vocabulary entries of ``labels`` (matched by first name, case-insensitive), sorted."""
        found = {self._by_name.get(n.lower()) for n in labels}
        return tuple(sorted(v for v in found if v is not None))

    def records(self) -> List[ImageRecord]:
        """Every record of every tar (reads all of them: prefer :meth:`chunks` in builds)."""
        return [r for chunk in self.chunks(0) for r in chunk]

    def chunks(
        self, shard_size: int, exclude_ids: Optional[Set[str]] = None
    ) -> List[_TarChunk]:
        """One lazy chunk per tar, in URL order (``shard_size`` does not apply: a tar is a chunk)."""
        return [_TarChunk(self, url, exclude_ids) for url in self.urls]
