"""A tool's config from ``--config-file`` and ``KEY VALUE`` overrides, with mistakes named.

detectron2 reports a mistyped key as ``AssertionError: Non-existent key``, a missing file as an
assertion and a YAML slip as a parser traceback; every tool loads its config here instead, so each
of these is a :class:`~retclip.utils.cli.UserError` naming the file and the key.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from .cli import UserError

__all__ = ["load_tool_config"]


def load_tool_config(config_file: Optional[str], opts: Sequence[str] = (), freeze: bool = True) -> Any:
    """:func:`retclip.config_file.load_config` (safe YAML, mistakes named) + the CPU fallback.

    Raises:
        UserError: the file is missing or unreadable, is not valid YAML, sets a key that does not
            exist or gives a value of the wrong type; the message names the file and key.
    """
    from retclip.config_file import load_config

    from .device import resolve_device

    if config_file and not os.path.isfile(os.path.expanduser(config_file)):
        raise UserError(f"--config-file {config_file}: no such file")
    cfg = load_config(config_file, opts, freeze=False)
    resolve_device(cfg)
    if freeze:
        cfg.freeze()
    return cfg
