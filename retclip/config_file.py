"""The one reader of config files: safe YAML only, ``_BASE_`` files included.

detectron2's ``CfgNode.merge_from_file`` retries a file the safe loader refuses with
``yaml.unsafe_load``, so a ``!!python/object/apply`` tag in a config runs code. Here every file,
each ``_BASE_`` included, goes through ``yaml.safe_load``; a tag that would build a Python object
is refused with an error naming the file. ``_BASE_`` resolves relative to the file that names it
(never the current folder), and a cycle of bases is an error listing the chain.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .utils.cli import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "read_yaml_mapping",
    "merge_yaml_mappings",
    "read_config_yaml",
    "merge_config_file",
    "merge_overrides",
    "load_config",
]

BASE_KEY = "_BASE_"


def read_yaml_mapping(path: str) -> Dict[str, Any]:
    """Parse one file with the safe loader; every failure is a UserError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.constructor.ConstructorError as e:
        tag = e.problem or ""
        where = f" (line {e.problem_mark.line + 1})" if e.problem_mark is not None else ""
        if "python/" in tag:
            raise UserError(
                f"{path}{where}: refused a YAML tag that would construct a Python object "
                f"({' '.join(tag.split())}); configs are read with the safe YAML loader only"
            ) from e
        raise UserError(f"{path}{where}: unsupported YAML tag ({' '.join(tag.split())})") from e
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a text (UTF-8) YAML file: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config must be a mapping of keys, not a {type(data).__name__}")
    return data


def merge_yaml_mappings(base: Dict[str, Any], child: Dict[str, Any], path: str, prefix: str = "") -> None:
    """Child values override the base's; nested mappings merge key by key (fvcore's rule)."""
    for key, value in child.items():
        if isinstance(value, dict) and key in base:
            if not isinstance(base[key], dict):
                raise UserError(f"{path}: {prefix}{key} is a mapping here but a value in its _BASE_")
            merge_yaml_mappings(base[key], value, path, f"{prefix}{key}.")
        else:
            base[key] = value


def read_config_yaml(path: str, _chain: Optional[List[str]] = None) -> Dict[str, Any]:
    """The mapping of ``path`` with its ``_BASE_`` chain merged in (bases first).

    Raises:
        UserError: a missing file or base, invalid YAML, a Python-object tag, or a cycle of
            ``_BASE_`` files; the message names the file.
    """
    path = os.path.abspath(os.path.expanduser(path))
    chain = list(_chain or [])
    if path in chain:
        raise UserError("cycle of _BASE_ files: " + " -> ".join(chain + [path]))
    if not os.path.isfile(path):
        named_by = f" (the _BASE_ of {chain[-1]})" if chain else ""
        raise UserError(f"config file {path}{named_by} does not exist")
    data = read_yaml_mapping(path)
    base_name = data.pop(BASE_KEY, None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name:
        raise UserError(f"{path}: _BASE_ must be one file name, got {base_name!r}")
    base_path = os.path.expanduser(base_name)
    if not os.path.isabs(base_path):
        base_path = os.path.join(os.path.dirname(path), base_path)
    merged = read_config_yaml(base_path, chain + [path])
    merge_yaml_mappings(merged, data, path)
    return merged


def merge_config_file(cfg: Any, path: str) -> None:
    """Merge ``path`` (safe YAML, ``_BASE_`` chain) into the detectron2 ``cfg``, in place.

    Raises:
        UserError: see :func:`read_config_yaml`; also a key that does not exist or a value of
            the wrong type (naming the file and key), or a config VERSION other than ``cfg``'s.
    """
    data = read_config_yaml(path)
    version = data.get("VERSION", cfg.get("VERSION"))
    if version != cfg.get("VERSION"):
        raise UserError(f"{path}: config VERSION {version} is not {cfg.get('VERSION')}, the one supported")
    loaded = type(cfg)(data)
    try:
        cfg.merge_from_other_cfg(loaded)
    except KeyError as e:  # yacs: "Non-existent config key: X"
        raise UserError(f"{path}: {e.args[0] if e.args else e}") from e
    except ValueError as e:  # yacs: type mismatch for a key
        raise UserError(f"{path}: {e}") from e


def merge_overrides(cfg: Any, opts: Sequence[str], where: str = "the command line") -> None:
    """``cfg.merge_from_list(opts)`` with an unknown key, an odd list or a wrong type named."""
    opts = list(opts)
    if len(opts) % 2:
        raise UserError(f"config overrides on {where} must be KEY VALUE pairs; {opts[-1]!r} has no value")
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except (AssertionError, KeyError) as e:  # yacs: "Non-existent key"
            raise UserError(f"config key {key} (on {where}) does not exist ({e.args[0] if e.args else e})") from e
        except ValueError as e:  # yacs: type mismatch
            raise UserError(f"config key {key}: bad value {value!r} ({e})") from e


def load_config(path: Optional[str], opts: Sequence[str] = (), freeze: bool = True) -> Any:
    """detectron2's defaults + every RetCLIP key + ``path`` (safe YAML) + ``KEY VALUE`` opts.

    The one way tools, the database builder, the score-cache writer and tests read a config.
    """
    from detectron2.config import get_cfg

    from .config import add_retclip_config

    cfg = get_cfg()
    add_retclip_config(cfg)
    if path:
        merge_config_file(cfg, path)
    merge_overrides(cfg, opts)
    if freeze:
        cfg.freeze()
    return cfg
