"""Shared test setup. HF_HUB_OFFLINE must be set before anything imports huggingface_hub:
without it a hub lookup spends ~46 s in retries before failing (there is no internet here)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import hashlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import retclip.data  # noqa: E402,F401  (compat steps, then dataset registration)
import retclip.evaluation  # noqa: E402,F401
import retclip.modeling  # noqa: E402,F401  (meta-architectures, backbones, heads)
import retclip.testing.clip_configs  # noqa: E402,F401  (tiny open_clip test architectures)

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _private_retclip_cache(tmp_path_factory):
    """Text-embedding (and other) caches go to a session tmp dir, never the user's cache."""
    os.environ["RETCLIP_CACHE"] = str(tmp_path_factory.mktemp("retclip_cache"))
    yield


def _tree_digest(folder: str) -> str:
    """sha256 over the names and bytes of every file below ``folder``, in sorted order."""
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


@pytest.fixture(scope="session")
def tree_digest():
    """Digest of a directory tree (determinism tests: same inputs, same bytes on disk)."""
    return _tree_digest
