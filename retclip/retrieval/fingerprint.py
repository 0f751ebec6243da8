"""Which encoder produced a set of features: stored with every database, checked on load.

Features from two CLIPs live in different spaces, so searching a database built with another
encoder gives meaningless neighbours without any error. The fingerprint (open_clip architecture,
weights, embedding dim) and the whole :class:`EmbeddingRecipe` (resize, mean/std, padding, dense
map, pooling, a hash of the weights as loaded) travel with the database like open_clip's
pretrained descriptors travel with weights. No detectron2 import.
"""
import hashlib
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

__all__ = [
    "EmbeddingRecipe",
    "EncoderFingerprint",
    "RECIPE_FIELDS",
    "describe_differences",
    "sha256_file",
    "sha256_state_dict",
]


def sha256_file(path: os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_state_dict(state: Mapping[str, Any]) -> str:
    """Hex sha256 over a state dict's tensors as loaded: names in sorted order, each with its
    dtype, shape and raw bytes. Device-independent; cheap next to a forward pass."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class EncoderFingerprint:
    """Identity of a CLIP image encoder.

    Attributes:
        model_name: open_clip architecture name, e.g. "convnext_large_d_320".
        weights: open_clip pretrained tag ("laion2b_s29b_b131k_ft_soup"), "sha256:<hex>" of a
            local weights file, or "random" for untrained weights (tests).
        embed_dim: dimension of the stored features.
    """

    model_name: str
    weights: str
    embed_dim: int

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ValueError("EncoderFingerprint needs a model_name")
        if int(self.embed_dim) <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")

    @classmethod
    def from_open_clip(
        cls, model_name: str, pretrained: str, embed_dim: int
    ) -> "EncoderFingerprint":
        """Fingerprint from open_clip's (architecture, pretrained) pair.

        Args:
            model_name: open_clip architecture.
            pretrained: a pretrained tag, a path to a local weights file (hashed with sha256, so
                renaming the file does not matter but changing it does), or "" for random weights.
            embed_dim: feature dimension.
        """
        if not pretrained:
            weights = "random"
        elif Path(pretrained).expanduser().is_file():
            weights = "sha256:" + sha256_file(Path(pretrained).expanduser())
        else:
            weights = pretrained
        return cls(model_name=model_name, weights=weights, embed_dim=int(embed_dim))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "EncoderFingerprint":
        try:
            return cls(str(d["model_name"]), str(d["weights"]), int(d["embed_dim"]))
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed encoder fingerprint {d!r}: {e}") from e

    def __str__(self) -> str:
        return f"{self.model_name}/{self.weights} (dim {self.embed_dim})"


#: Fields of :class:`EmbeddingRecipe` that decide where a segment embedding lands; ``weights``
#: (the tag or file the weights came from) is provenance only: the content hash decides.
RECIPE_FIELDS = (
    "model_name",
    "weights_sha256",
    "embed_dim",
    "resize",
    "pixel_mean",
    "pixel_std",
    "pad_multiple",
    "dense_mode",
    "window",
    "stride",
    "pooling",
    "feature_dtype",
)


@dataclass(frozen=True)
class EmbeddingRecipe:
    """Everything that makes a segment embedding: recorded in a database, compared by the model.

    Two encoders with the same open_clip name can still put the same segment in different places
    (another resize, mean/std, dense variant, pooling rule or weights), so the whole recipe
    travels with the database and a model refuses a database whose recipe differs from its own.

    Attributes:
        model_name: open_clip architecture ("convnext_large_d_320", "ViT-B-16").
        weights: where the weights came from (tag, "sha256:<file hash>", "random"): provenance.
        weights_sha256: sha256 over the image tower's state dict as loaded (names, dtypes,
            shapes, bytes in name order): the identity of the weights.
        embed_dim: dimension of the embeddings.
        resize: the resize rule, e.g. "shortest_edge(800, max=1333)".
        pixel_mean, pixel_std: normalisation on the 0-255 RGB scale.
        pad_multiple: images are zero-padded (after normalisation) to a multiple of this.
        dense_mode: the dense map ("convnext", "resnet", or the ViT's "value" / "tokens").
        window, stride: sliding-window side and step in pixels (0: one forward).
        pooling: mask resizing, pooling, validity and head, in words.
        feature_dtype: dtype the image tower computes in.
    """

    model_name: str
    weights: str
    weights_sha256: str
    embed_dim: int
    resize: str
    pixel_mean: Tuple[float, ...]
    pixel_std: Tuple[float, ...]
    pad_multiple: int
    dense_mode: str
    window: int
    stride: int
    pooling: str
    feature_dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
        for name in ("embed_dim", "pad_multiple", "window", "stride"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def fingerprint(self) -> EncoderFingerprint:
        """The coarse identity older manifests carry (the ViT's dense variant is in the name)."""
        name = self.model_name
        if self.dense_mode not in ("convnext", "resnet"):
            name = f"{name}+dense-{self.dense_mode}"
        return EncoderFingerprint(name, self.weights, self.embed_dim)

    def differences(
        self, other: "EmbeddingRecipe", fields: Sequence[str] = RECIPE_FIELDS
    ) -> List[Tuple[str, Any, Any]]:
        """(field, this value, other value) for every field of ``fields`` that differs."""
        return [
            (f, getattr(self, f), getattr(other, f))
            for f in fields
            if getattr(self, f) != getattr(other, f)
        ]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["pixel_mean"], d["pixel_std"] = list(self.pixel_mean), list(self.pixel_std)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], where: str = "manifest") -> "EmbeddingRecipe":
        """Parse a stored recipe; missing fields are an error naming them and ``where``."""
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise ValueError(
                f"{where}: the embedding recipe lacks {missing}; rebuild the database with "
                "tools/build_database.py"
            )
        return cls(**{f.name: d[f.name] for f in fields(cls)})


def describe_differences(diffs: Sequence[Tuple[str, Any, Any]]) -> str:
    """"field: database X, model Y" for each difference, one per clause."""
    return "; ".join(f"{name}: database {theirs!r}, model {ours!r}" for name, ours, theirs in diffs)
