"""Imports every module that registers something with detectron2.

Kept separate from ``__init__`` so that each area owns one line here and nothing else runs at
import time. Modules listed here must only define and register, never read files or download.
"""
import importlib
import logging

logger = logging.getLogger(__name__)

#: Modules whose import registers meta-architectures, heads, backbones or datasets.
REGISTERING_MODULES = [
    "retclip.testing.clip_configs",
    "retclip.data",
    "retclip.modeling",
    "retclip.modeling.meta_arch.retclip",
    "retclip.modeling.meta_arch.training_free",
]

for _name in REGISTERING_MODULES:
    importlib.import_module(_name)
