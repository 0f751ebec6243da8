"""Truncated text encoding equals open_clip's full 77-token encode_text; fallbacks are chosen."""

import random

import open_clip
import pytest
import torch
import torch.nn.functional as F

from retclip.modeling.text_encoder import CLIPTextEncoder

WORDS = (
    "cat dog traffic light sofa of a the photo in scene large small medium wall sky person grass "
    "car lamp mountain brick kitchen island chest drawers swivel chair television receiver"
).split()


def random_prompts(n: int, seed: int) -> list:
    """Prompts of 1..20 words (some random letter strings), i.e. very different token lengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [
            rng.choice(WORDS)
            if rng.random() < 0.7
            else "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
            for _ in range(rng.randint(1, 20))
        ]
        out.append(" ".join(words) + rng.choice([".", "", "!"]))
    return out


class SequenceLengths:
    """Forward pre-hook on a text transformer recording the sequence length of every call."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.lengths = []
        self._handle = transformer.register_forward_pre_hook(self._record)

    def _record(self, module, args):
        self.lengths.append(args[0].shape[1])  # open_clip's Transformer takes (N, L, D)

    def remove(self) -> None:
        self._handle.remove()


def full_path(model, tokenizer, prompts):
    """Independent reference: open_clip's own encode_text on all 77 tokens, one call per prompt
    batch of 50 (a different batching than the encoder's)."""
    tokens = tokenizer(prompts)
    with torch.no_grad():
        return torch.cat([model.encode_text(tokens[i : i + 50]) for i in range(0, len(tokens), 50)])


def check_equal_to_full_path(model, model_name, num_prompts=200, seed=0):
    tokenizer = open_clip.get_tokenizer(model_name)
    encoder = CLIPTextEncoder(model, tokenizer, model_name, batch_size=32)
    assert encoder.truncates
    prompts = random_prompts(num_prompts, seed)
    tower = model.transformer if hasattr(model, "transformer") else model.text.transformer
    hook = SequenceLengths(tower)
    try:
        fast = F.normalize(encoder(prompts).float(), dim=-1)
    finally:
        hook.remove()
    ref = F.normalize(full_path(model, tokenizer, prompts).float(), dim=-1)
    assert max(hook.lengths) < 77 and min(hook.lengths) < max(hook.lengths)  # truncated, per batch
    assert (fast - ref).abs().max().item() <= 1e-5
    # nearest text: from random queries and from each prompt to the others
    g = torch.Generator().manual_seed(1)
    queries = F.normalize(torch.randn(500, ref.shape[1], generator=g), dim=-1)
    assert torch.equal((queries @ fast.T).argmax(1), (queries @ ref.T).argmax(1))
    eye = torch.eye(len(prompts), dtype=torch.bool)
    assert torch.equal(
        (fast @ fast.T).masked_fill(eye, -2).argmax(1), (ref @ ref.T).masked_fill(eye, -2).argmax(1)
    )


def tiny(name="retclip-tiny-convnext", **kwargs):
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None, **kwargs).eval()


def test_tiny_tower_truncated_equals_full_path():
    check_equal_to_full_path(tiny(), "retclip-tiny-convnext")


def test_custom_text_tower_truncated_equals_full_path():
    model = tiny(force_custom_text=True)
    assert isinstance(model, open_clip.CustomTextCLIP)
    check_equal_to_full_path(model, "retclip-tiny-convnext", num_prompts=60)


@pytest.mark.slow
def test_real_size_tower_truncated_equals_full_path():
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    check_equal_to_full_path(model, "ViT-B-16")


def _no_causal_mask(model):
    model.attn_mask = None


def _pool(kind):
    def change(model):
        model.text_pool_type = kind

    return change


def _class_token(model):
    model.text.cls_emb = torch.nn.Parameter(torch.zeros(model.text.width))


def _hf_like(model):
    model.text = torch.nn.Linear(4, 4)  # a tower without open_clip's TextTransformer layout


@pytest.mark.parametrize(
    "custom, change, reason",
    [
        (False, _no_causal_mask, "not causal"),
        (False, _pool("first"), "'first'"),
        (False, _pool("last"), "'last'"),
        (True, _class_token, "class token"),
        (True, _hf_like, "not an open_clip TextTransformer"),
    ],
)
def test_inexact_towers_fall_back_to_full_path(custom, change, reason, caplog):
    model = tiny(force_custom_text=custom)
    change(model)
    with caplog.at_level("INFO", logger="retclip.modeling.text_encoder"):
        encoder = CLIPTextEncoder(model, open_clip.get_tokenizer("retclip-tiny-convnext"), "tiny")
    assert not encoder.truncates and reason in caplog.text
    if change in (_class_token, _hf_like):
        return  # these stand-in towers cannot run; the choice of path is what is tested
    prompts = random_prompts(10, seed=3)
    hook = SequenceLengths(model.transformer if not custom else model.text.transformer)
    try:
        out = encoder(prompts)
    finally:
        hook.remove()
    assert hook.lengths == [77]
    torch.testing.assert_close(out, full_path(model, open_clip.get_tokenizer("tiny"), prompts))


def test_weights_digest_follows_loaded_weights():
    model = tiny()
    encoder = CLIPTextEncoder(model, open_clip.get_tokenizer("retclip-tiny-convnext"), "tiny")
    before = encoder.weights_digest()
    assert encoder.weights_digest() == before  # computed once, stable
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["visual.trunk.stem.0.weight"] += 1  # image tower only: same text tower
    model.load_state_dict(state)
    assert encoder.weights_digest() == before
    state["ln_final.weight"] += 1e-3
    model.load_state_dict(state)
    assert encoder.weights_digest() != before
