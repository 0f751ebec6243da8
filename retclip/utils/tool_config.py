"""A tool's config from ``--config-file`` and ``KEY VALUE`` overrides, with mistakes named.

detectron2 reports a mistyped key as ``AssertionError: Non-existent key``, a missing file as an
assertion and a YAML slip as a parser traceback; every tool loads its config here instead, so each
of these is a :class:`~retclip.utils.cli.UserError` naming the file and the key.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from .cli import UserError

__all__ = ["load_tool_config", "merge_overrides"]


def merge_overrides(cfg: Any, opts: Sequence[str], where: str = "the command line") -> None:
    """``cfg.merge_from_list(opts)`` with an unknown key, an odd list or a wrong type named."""
    opts = list(opts)
    if len(opts) % 2:
        raise UserError(
            f"config overrides on {where} must be KEY VALUE pairs; {opts[-1]!r} has no value"
        )
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except AssertionError as e:  # yacs's way of saying "Non-existent key"
            raise UserError(f"config key {key} (on {where}) does not exist ({e})") from e
        except ValueError as e:  # "Type mismatch ... for config key"
            raise UserError(f"config key {key}: bad value {value!r} ({e})") from e


def load_tool_config(config_file: Optional[str], opts: Sequence[str] = (), freeze: bool = True) -> Any:
    """detectron2 defaults + every RetCLIP key + ``config_file`` + ``opts``; CPU fallback applied.

    Raises:
        UserError: the file is missing or unreadable, is not valid YAML, sets a key that does not
            exist or gives a value of the wrong type; the message names the file and key.
    """
    import yaml
    from detectron2.config import get_cfg

    from retclip.config import add_retclip_config

    from .device import resolve_device

    cfg = get_cfg()
    add_retclip_config(cfg)
    if config_file:
        path = os.path.expanduser(config_file)
        if not os.path.isfile(path):
            raise UserError(f"--config-file {config_file}: no such file")
        try:
            cfg.merge_from_file(path)
        except KeyError as e:  # "Non-existent config key: X"
            raise UserError(f"{config_file}: {e.args[0] if e.args else e}") from e
        except ValueError as e:  # type mismatch
            raise UserError(f"{config_file}: {e}") from e
        except yaml.YAMLError as e:
            raise UserError(f"{config_file} is not valid YAML: {' '.join(str(e).split())}") from e
        except AssertionError as e:  # a _BASE_ that does not exist, in detectron2's words
            raise UserError(f"{config_file}: {e}") from e
    merge_overrides(cfg, opts)
    resolve_device(cfg)
    if freeze:
        cfg.freeze()
    return cfg
