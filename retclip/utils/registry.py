"""A name -> object registry without detectron2, for choices that a config key names.

detectron2's ``Registry`` keys entries by ``__name__`` and needs detectron2; the ensemble modes
and retrieval aggregations are used by plain-PyTorch code (``retclip.ensemble``,
``retclip.retrieval``) and are named by config strings, so they register here by explicit name.
An unknown name is a ``ValueError`` that names the config key and lists the valid names.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, List, TypeVar

__all__ = ["NamedRegistry"]

T = TypeVar("T")


class NamedRegistry(Generic[T]):
    """Entries registered once by name; looked up by every caller through :meth:`get`.

    Args:
        what: what an entry is, for error messages ("ensemble mode").
        key: the config key whose values are the names ("MODEL.ENSEMBLE.MODE").
    """

    def __init__(self, what: str, key: str) -> None:
        self.what = what
        self.key = key
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``. A name registered twice is an error."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a temporary one)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name raises ValueError naming the key and the valid names."""
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"{self.key}: unknown {self.what} {name!r}; valid: {self.names()}"
            ) from None

    def names(self) -> List[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"NamedRegistry({self.what!r}: {self.names()})"
