"""Checkpoint compatibility with bytedance/fc-clip and the strict checkpointer's errors."""

import os

import pytest
import torch
from detectron2.modeling import build_model
from fcclip_testutils import REPO, build_tiny, released_rows

from retclip.checkpoint import CLASS_COUNT_KEYS, RetCLIPCheckpointer, load_model_weights
from retclip.config import load_config
from retclip.utils.cli import UserError


def _real_cfg(name):
    return load_config(
        os.path.join(REPO, "configs", "fcclip", name),
        ["MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS", "", "MODEL.DEVICE", "cpu"],
        freeze=False,
    )


@pytest.mark.parametrize(
    "config, tsv",
    [
        ("fcclip_convnext_large_eval_ade20k.yaml", "fcclip_convnext_large_d_320.state_dict.tsv"),
        ("fcclip_r50x64_eval_ade20k.yaml", "fcclip_rn50x64.state_dict.tsv"),
    ],
)
def test_state_dict_matches_released_layout(config, tsv):
    expected = {key: (shape, dtype) for key, shape, dtype in released_rows(tsv)}
    model = build_model(_real_cfg(config))
    ours = {
        k: (str(tuple(v.shape)), str(v.dtype).replace("torch.", ""))
        for k, v in model.state_dict().items()
    }
    assert sorted(set(expected) - set(ours)) == []  # missing
    assert sorted(set(ours) - set(expected)) == []  # unexpected
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    assert "pixel_mean" not in ours and "pixel_std" not in ours


@pytest.fixture(scope="module")
def tiny_pair():
    return build_tiny("convnext", seed=0), build_tiny("convnext", seed=1)


def _save(state, path):
    torch.save({"model": state, "iteration": 7}, path)
    return str(path)


def test_detectron2_checkpoint_loads_exactly(tmp_path, tiny_pair):
    source, target = tiny_pair
    path = _save(source.state_dict(), tmp_path / "model_final.pth")
    checkpointer = RetCLIPCheckpointer(target, strict=True)
    extra = checkpointer.load(path)
    assert extra.get("iteration") == 7
    incompatible = checkpointer.last_incompatible
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


def test_module_prefix_and_bare_state_dict_load(tmp_path, tiny_pair):
    source, target = tiny_pair
    path = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)
    RetCLIPCheckpointer(target, strict=True).load(str(path))
    key = "sem_seg_head.predictor.query_feat.weight"
    assert torch.equal(target.state_dict()[key], source.state_dict()[key])


def test_wrong_shape_names_key_and_both_shapes(tmp_path, tiny_pair):
    source, target = tiny_pair
    state = dict(source.state_dict())
    state["sem_seg_head.predictor.query_embed.weight"] = torch.zeros(11, 32)
    path = _save(state, tmp_path / "bad_shape.pth")
    with pytest.raises(ValueError) as err:
        RetCLIPCheckpointer(target).load(path)
    message = str(err.value)
    assert "sem_seg_head.predictor.query_embed.weight" in message
    assert "(11, 32)" in message and "(10, 32)" in message


def test_class_count_mismatch_can_be_opted_out(tmp_path, tiny_pair):
    source, target = tiny_pair
    state = dict(source.state_dict())
    state["criterion.empty_weight"] = torch.ones(134)
    path = _save(state, tmp_path / "coco133.pth")
    with pytest.raises(ValueError, match="criterion.empty_weight"):
        RetCLIPCheckpointer(target).load(path)
    before = target.criterion.empty_weight.clone()
    checkpointer = RetCLIPCheckpointer(target, allow_shape_mismatch=CLASS_COUNT_KEYS)
    checkpointer.load(path)
    assert torch.equal(target.criterion.empty_weight, before)
    assert [k for k, *_ in checkpointer.last_incompatible.incorrect_shapes] == [
        "criterion.empty_weight"
    ]


def test_missing_and_non_checkpoint_files_are_named(tmp_path, tiny_pair):
    _, target = tiny_pair
    missing = str(tmp_path / "does_not_exist.pth")
    with pytest.raises(FileNotFoundError, match="does_not_exist.pth"):
        RetCLIPCheckpointer(target).load(missing)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        RetCLIPCheckpointer(target).load(str(text))
    pkl = tmp_path / "old.pkl"
    pkl.write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="old.pkl"):
        RetCLIPCheckpointer(target).load(str(pkl))


def test_strict_mode_reports_unexpected_keys(tmp_path, tiny_pair):
    source, target = tiny_pair
    state = dict(source.state_dict())
    state["sem_seg_head.extra.weight"] = torch.zeros(2)
    path = _save(state, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="sem_seg_head.extra.weight"):
        RetCLIPCheckpointer(target, strict=True).load(path)


def test_unknown_yaml_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"_BASE_: {os.path.join(REPO, 'configs', 'tests', 'tiny_fcclip_convnext.yaml')}\n"
        "MODEL:\n  FC_CLIP:\n    CLIP_MODE_NAME: RN50\n"
    )
    with pytest.raises(UserError, match=f"{bad}.*CLIP_MODE_NAME"):
        load_config(str(bad))


def test_pkl_is_refused_with_the_conversion_command(tmp_path, tiny_pair):
    _, target = tiny_pair
    pkl = tmp_path / "model_final.pkl"
    pkl.write_bytes(b"\x80\x04N.")
    with pytest.raises(UserError) as err:
        load_model_weights(target, str(pkl))
    assert str(pkl) in str(err.value) and "tools/convert_checkpoint.py --allow-pickle" in str(err.value)


def test_safetensors_weights_load_strictly(tmp_path, tiny_pair):
    from safetensors.torch import save_file

    source, target = tiny_pair
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    load_model_weights(target, str(tmp_path / "w.safetensors"))
    for key, value in state.items():
        assert torch.equal(target.state_dict()[key], value), key


def test_missing_keys_fail_and_are_named(tmp_path, tiny_pair):
    source, target = tiny_pair
    state = dict(source.state_dict())
    del state["sem_seg_head.predictor.query_feat.weight"]
    path = _save(state, tmp_path / "partial.pth")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match="sem_seg_head.predictor.query_feat.weight"):
        load_model_weights(target, path)
    # the same checkpointer (not strict) loads the rest and keeps the missing key as it was
    RetCLIPCheckpointer(target).load(path)
    key = "sem_seg_head.predictor.query_feat.weight"
    assert torch.equal(target.state_dict()[key], before[key])


@pytest.mark.parametrize(
    "name, clip, dim",
    [
        ("fcclip_r50_eval_ade20k.yaml", "RN50", 1024),
        ("fcclip_r101_eval_ade20k.yaml", "RN101", 512),
        ("fcclip_r50x4_eval_ade20k.yaml", "RN50x4", 640),
        ("fcclip_r50x16_eval_ade20k.yaml", "RN50x16", 768),
        ("fcclip_r50x64_eval_ade20k.yaml", "RN50x64", 1024),
        ("fcclip_convnext_large_eval_coco.yaml", "convnext_large_d_320", 768),
    ],
)
def test_backbone_configs(name, clip, dim):
    cfg = _real_cfg(name)
    fc = cfg.MODEL.FC_CLIP
    assert (fc.CLIP_MODEL_NAME, fc.EMBED_DIM) == (clip, dim)
    assert fc.ENSEMBLE_ON_VALID_MASK == clip.startswith("RN")
    ens = cfg.MODEL.ENSEMBLE
    assert (ens.MODE, ens.ALPHA, ens.BETA) == ("geometric", 0.4, 0.8)  # FC-CLIP's ensemble
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 250
    assert cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD == 0.0
    assert cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD == 0.8
    import open_clip

    assert open_clip.get_model_config(clip)["embed_dim"] == dim


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_convert_checkpoint_turns_a_pkl_of_arrays_into_weights_the_model_loads(
    tmp_path, tiny_pair, protocol
):
    """tools/convert_checkpoint.py on a detectron2-style .pkl ({"model": {name: numpy array}},
    an OrderedDict, an author string), pickled with Python 2's protocol and newer ones: the
    restricted unpickler reconstructs the arrays, and the .pth it writes loads strictly into the
    model with every tensor equal."""
    import collections
    import pickle
    import subprocess
    import sys

    source, target = tiny_pair
    arrays = collections.OrderedDict((k, v.numpy()) for k, v in source.state_dict().items())
    pkl, pth = tmp_path / "model_final.pkl", tmp_path / "model_final.pth"
    with open(pkl, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "convert_checkpoint.py"), "--allow-pickle",
         str(pkl), str(pth)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{len(arrays)} tensors" in proc.stdout
    load_model_weights(target, str(pth))
    for key, value in target.state_dict().items():
        assert torch.equal(value, torch.from_numpy(arrays[key])), key
