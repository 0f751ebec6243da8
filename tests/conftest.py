"""Shared test setup. HF_HUB_OFFLINE must be set before anything imports huggingface_hub:
without it a hub lookup spends ~46 s in retries before failing (there is no internet here)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import retclip  # noqa: E402,F401  (compat steps, then registration)

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
