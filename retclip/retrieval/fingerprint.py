"""Which encoder produced a set of features: stored with every database, checked on load.

Features from two CLIPs live in different spaces, so searching a database built with another
encoder gives meaningless neighbours without any error. The fingerprint (open_clip architecture,
weights, embedding dim) travels with the database like open_clip's pretrained descriptors travel
with weights.
"""
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict

__all__ = ["EncoderFingerprint", "sha256_file"]


def sha256_file(path: os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
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
