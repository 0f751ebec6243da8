"""Installs the ``retclip`` package.

Runtime dependencies are declared here with ranges; the exact, tested versions live in
``requirements/lock.txt``, which ``scripts/setup.sh`` installs. Detectron2 is not declared:
it has no wheel on PyPI, and ``scripts/setup.sh`` chooses one of three ways to provide it.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _version() -> str:
    for line in (ROOT / "retclip" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("retclip/__init__.py defines no __version__")


setup(
    name="retclip",
    version=_version(),
    description="Open-vocabulary panoptic segmentation with retrieval augmentation (RetCLIP)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["retclip", "retclip.*"]),
    package_data={
        "retclip": [
            "testing/model_configs/*.json",
            "data/class_names/*.txt",
            "data/class_names/*.json",
        ]
    },
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy>=1.24",
        "open_clip_torch>=2.26",
        "timm>=1.0",
        "transformers>=4.40",
        "segment-anything>=1.0",
        "faiss-cpu>=1.8",
        "pycocotools>=2.0.7",
        "scipy>=1.10",
        "opencv-python-headless>=4.8",
        "tensorboard>=2.14",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "hotcoco>=1.3",
        "matplotlib>=3.7",
        "scikit-image>=0.22",
        "pillow>=10",
        "pyyaml>=6",
    ],
    extras_require={
        # faiss-gpu pulls ~1.3 GB of CUDA libraries: only for clusters.
        "gpu": ["faiss-gpu>=1.8"],
        # tools/web_demo.py, and the browser tests that drive it (with the OS's Chromium).
        "web": ["gradio>=5", "playwright>=1.40"],
        # webdataset tar shards as a database source (DATABASE_BUILD.SOURCE.TYPE webdataset).
        "scale": ["webdataset>=0.2"],
        "dev": ["pytest>=8"],
    },
)
