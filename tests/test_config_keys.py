"""One key per setting: every key RetCLIP declares is read somewhere, renamed keys fail naming
their replacement, and the SAM / Grounding DINO blocks are declared once for both users."""
import re
from pathlib import Path

import pytest
from detectron2.config import get_cfg

from retclip.config import RENAMED_KEYS, add_retclip_config

REPO = Path(__file__).resolve().parents[1]
#: Declared only so that FC-CLIP's released YAMLs load (retclip/config.py says which file sets them).
RELEASED_ONLY = {
    "MODEL.RESNETS.STEM_TYPE",
    "MODEL.RESNETS.RES5_MULTI_GRID",
    "MODEL.MASK_FORMER.ENC_LAYERS",
}


def _flat(node, prefix=""):
    out = {}
    for key, value in node.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cfg():
    cfg = get_cfg()
    add_retclip_config(cfg)
    return cfg


def test_every_declared_key_has_a_reader():
    declared = set(_flat(_cfg())) - set(_flat(get_cfg()))
    sources = [
        p.read_text()
        for folder in ("retclip", "tools")
        for p in (REPO / folder).rglob("*.py")
        if p.name != "config.py"
    ]
    text = "\n".join(sources)
    unread = []
    for key in sorted(declared - RELEASED_ONLY):
        last = key.split(".")[-1]
        # attribute access (cfg.X.LAST) or a string key ("LAST"), as in dict(cfg.X) / getattr
        if not re.search(rf"\.{last}\b|[\"']{last}[\"']", text):
            unread.append(key)
    assert not unread, f"declared but read by nothing: {unread}"
    assert RELEASED_ONLY <= declared


@pytest.mark.parametrize("old, new", sorted(RENAMED_KEYS.items()))
def test_old_key_in_yaml_names_the_new_key(tmp_path, old, new):
    parts = old.split(".")
    lines = [f"{'  ' * i}{p}:" for i, p in enumerate(parts[:-1])]
    value = '"geometric"' if parts[-1] == "ENSEMBLE_MODE" else "0.5"
    lines.append(f"{'  ' * (len(parts) - 1)}{parts[-1]}: {value}")
    path = tmp_path / "old.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(KeyError, match=re.escape(new)):
        _cfg().merge_from_file(str(path))
    with pytest.raises(KeyError, match=re.escape(new)):
        _cfg().merge_from_list([old, value.strip('"')])


def test_sam_and_grounding_dino_blocks_have_one_declaration():
    cfg = _cfg()
    for block in ("SAM", "GROUNDING_DINO"):
        model, build = cfg.MODEL.TRAINING_FREE[block], cfg.DATABASE_BUILD[block]
        assert dict(model) == dict(build) and len(model) >= 5, block
    # every field is read by the one proposal factory both paths use
    factory = (REPO / "retclip/proposals/build.py").read_text() + (
        REPO / "retclip/proposals/sam.py"
    ).read_text()
    for block in ("SAM", "GROUNDING_DINO"):
        for field in cfg.DATABASE_BUILD[block]:
            assert re.search(rf"\.{field}\b", factory), f"{block}.{field}"


def test_ensemble_weights_live_in_one_block():
    cfg = _cfg()
    assert set(cfg.MODEL.ENSEMBLE) == {"MODE", "ALPHA", "BETA", "GAMMA"}
    for old in RENAMED_KEYS:
        node = cfg
        *parents, last = old.split(".")
        for part in parents:
            node = node[part]
        assert last not in node, old
