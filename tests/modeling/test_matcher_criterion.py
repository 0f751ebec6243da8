"""HungarianMatcher against brute force over all assignments, SetCriterion against losses
computed by hand with NumPy (points fixed at pixel centres so sampling is exact)."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from retclip.config import add_retclip_config
from retclip.modeling.criterion import SetCriterion
from retclip.modeling.matcher import HungarianMatcher

H, W = 4, 5
DATA = Path(__file__).parent / "data"


def _pixel_centres(count=1):
    ys, xs = np.meshgrid((np.arange(H) + 0.5) / H, (np.arange(W) + 0.5) / W, indexing="ij")
    pts = torch.tensor(np.stack([xs.ravel(), ys.ravel()], -1), dtype=torch.float32)
    return pts[None].repeat(count, 1, 1)


class CentreMatcher(HungarianMatcher):
    def sample_points(self, device):
        return _pixel_centres().to(device)


class CentreCriterion(SetCriterion):
    def sample_points(self, src_masks):
        return _pixel_centres(src_masks.shape[0]).to(src_masks.device)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _bce(logit, target):
    return np.maximum(logit, 0) - logit * target + np.log1p(np.exp(-np.abs(logit)))


def _dice(logit, target):
    p = _sigmoid(logit)
    return 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _batch(seed, batch=2, queries=4, num_classes=3, num_targets=(3, 2)):
    g = torch.Generator().manual_seed(seed)
    outputs = {
        "pred_logits": torch.randn(batch, queries, num_classes + 1, generator=g),
        "pred_masks": torch.randn(batch, queries, H, W, generator=g) * 3,
    }
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,), generator=g),
            "masks": (torch.rand(n, H, W, generator=g) > 0.5).float(),
        }
        for n in num_targets
    ]
    return outputs, targets


def _hand_cost(logits, masks, target, wc, wm, wd):
    prob = _softmax(logits.numpy().astype(np.float64))
    pm = masks.numpy().astype(np.float64).reshape(len(masks), -1)
    tm = target["masks"].numpy().astype(np.float64).reshape(len(target["masks"]), -1)
    cost = np.zeros((len(pm), len(tm)))
    for i in range(len(pm)):
        for j in range(len(tm)):
            cost[i, j] = (
                -wc * prob[i, int(target["labels"][j])]
                + wm * _bce(pm[i], tm[j]).mean()
                + wd * _dice(pm[i], tm[j])
            )
    return cost


@pytest.mark.parametrize(
    "weights", [(2.0, 5.0, 5.0), (5.0, 0.1, 0.1), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matcher_matches_brute_force_minimum(weights, seed):
    outputs, targets = _batch(seed=seed)
    wc, wm, wd = weights
    matcher = CentreMatcher(cost_class=wc, cost_mask=wm, cost_dice=wd, num_points=H * W)
    indices = matcher(outputs, targets)
    for b, (rows, cols) in enumerate(indices):
        cost = _hand_cost(
            outputs["pred_logits"][b], outputs["pred_masks"][b], targets[b], wc, wm, wd
        )
        got_cost = matcher.cost_matrix(
            outputs["pred_logits"][b], outputs["pred_masks"][b], targets[b]
        )
        np.testing.assert_allclose(got_cost.numpy(), cost, rtol=1e-5, atol=1e-5)
        num_q, num_t = cost.shape
        best = min(
            (sum(cost[q, t] for t, q in enumerate(perm)), perm)
            for perm in itertools.permutations(range(num_q), num_t)
        )
        assert rows.dtype == torch.int64 and len(rows) == num_t
        got = {int(t): int(q) for q, t in zip(rows, cols)}
        assert got == {t: q for t, q in enumerate(best[1])}
        np.testing.assert_allclose(cost[rows.numpy(), cols.numpy()].sum(), best[0], rtol=1e-6)


def test_matcher_random_points_and_empty_targets():
    outputs, targets = _batch(seed=1, num_targets=(2, 0))
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=64)
    (rows0, cols0), (rows1, cols1) = matcher(outputs, targets)
    assert sorted(cols0.tolist()) == [0, 1] and len(set(rows0.tolist())) == 2
    assert len(rows1) == 0 and len(cols1) == 0
    with pytest.raises(ValueError, match="num_points"):
        HungarianMatcher(num_points=0)


def _hand_losses(outputs, targets, indices, num_classes, eos_coef):
    logits = outputs["pred_logits"].detach().numpy().astype(np.float64)
    masks = outputs["pred_masks"].detach().numpy().astype(np.float64)
    weight = np.ones(num_classes + 1)
    weight[-1] = eos_coef
    num_masks = max(sum(len(t["labels"]) for t in targets), 1)
    nll_sum = w_sum = bce = dice = 0.0
    for b, (rows, cols) in enumerate(indices):
        assigned = {int(q): int(t) for q, t in zip(rows, cols)}
        for q in range(logits.shape[1]):
            label = int(targets[b]["labels"][assigned[q]]) if q in assigned else num_classes
            logp = np.log(_softmax(logits[b, q]))
            nll_sum += -weight[label] * logp[label]
            w_sum += weight[label]
            if q in assigned:
                tm = targets[b]["masks"][assigned[q]].numpy().astype(np.float64).ravel()
                bce += _bce(masks[b, q].ravel(), tm).mean()
                dice += _dice(masks[b, q].ravel(), tm)
    return {"loss_ce": nll_sum / w_sum, "loss_mask": bce / num_masks, "loss_dice": dice / num_masks}


def _criterion(num_classes=3, eos_coef=0.1):
    matcher = CentreMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=H * W)
    return CentreCriterion(
        num_classes,
        matcher,
        {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        eos_coef,
        ["labels", "masks"],
        num_points=H * W,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def test_criterion_values_match_hand_computation_with_aux_outputs():
    outputs, targets = _batch(seed=2)
    aux_outputs, _ = _batch(seed=3)
    outputs["aux_outputs"] = [aux_outputs, aux_outputs]
    criterion = _criterion()
    losses = criterion(outputs, targets)
    assert set(losses) == {
        f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")
    }
    main = {k: v for k, v in outputs.items() if k != "aux_outputs"}
    for suffix, out in (("", main), ("_0", aux_outputs), ("_1", aux_outputs)):
        want = _hand_losses(out, targets, criterion.matcher(out, targets), 3, 0.1)
        for key, value in want.items():
            np.testing.assert_allclose(
                float(losses[key + suffix]), value, rtol=1e-5, err_msg=key + suffix
            )


def test_criterion_without_targets_and_gradients():
    outputs, targets = _batch(seed=4, num_targets=(0, 0))
    outputs = {k: v.clone().requires_grad_() for k, v in outputs.items()}
    losses = _criterion()(outputs, targets)
    assert float(losses["loss_mask"].detach()) == 0 and float(losses["loss_dice"].detach()) == 0
    want = _hand_losses(outputs, targets, [(torch.empty(0, dtype=torch.long),) * 2] * 2, 3, 0.1)
    np.testing.assert_allclose(float(losses["loss_ce"].detach()), want["loss_ce"], rtol=1e-5)
    sum(losses.values()).backward()
    assert outputs["pred_logits"].grad is not None and outputs["pred_masks"].grad is not None


def test_importance_sampled_training_step_is_finite():
    outputs, targets = _batch(seed=5)
    outputs["pred_masks"].requires_grad_()
    criterion = SetCriterion(
        3,
        HungarianMatcher(num_points=32),
        {},
        0.1,
        ["labels", "masks"],
        num_points=32,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )
    points = criterion.sample_points(outputs["pred_masks"][0, :3, None].detach())
    assert points.shape == (3, 32, 2) and points.min() >= 0 and points.max() <= 1
    losses = criterion(outputs, targets)
    total = losses["loss_mask"] + losses["loss_dice"]
    total.backward()
    assert torch.isfinite(total) and torch.count_nonzero(outputs["pred_masks"].grad) > 0


def test_from_config_matches_fcclip_training_setup():
    cfg = get_cfg()
    add_retclip_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 133
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    criterion = SetCriterion(cfg)
    (row,) = [
        line.split("\t")
        for line in (DATA / "fcclip_convnext_large_d_320_decoders.state_dict.tsv")
        .read_text()
        .splitlines()
        if line.startswith("criterion.")
    ]
    ((key, buf),) = criterion.state_dict().items()
    assert ["criterion." + key, str(tuple(buf.shape)), str(buf.dtype).replace("torch.", "")] == row
    assert float(buf[-1]) == pytest.approx(0.1) and torch.all(buf[:-1] == 1)
    assert len(criterion.weight_dict) == 3 * 10
    assert criterion.weight_dict["loss_ce_8"] == 2.0 and criterion.weight_dict["loss_dice"] == 5.0
    assert criterion.num_points == 12544 and criterion.matcher.num_points == 12544
    assert (criterion.matcher.cost_class, criterion.matcher.cost_mask) == (2.0, 5.0)
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(3, criterion.matcher, {}, 0.1, ["boxes"], 4, 3.0, 0.75)


def test_tiny_head_overfits_one_image_with_the_criterion():
    """Head + matcher + criterion together: a few Adam steps on one image must cut the loss."""
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        cfg = get_cfg()
        add_retclip_config(cfg)
        head_cfg = cfg.MODEL.SEM_SEG_HEAD
        head_cfg.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        head_cfg.NUM_CLASSES = 3
        head_cfg.CONVS_DIM = head_cfg.MASK_DIM = 32
        head_cfg.NORM = "GN"
        head_cfg.TRANSFORMER_ENC_LAYERS = 1
        mf = cfg.MODEL.MASK_FORMER
        mf.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
        mf.DEC_LAYERS, mf.NUM_OBJECT_QUERIES, mf.HIDDEN_DIM, mf.DIM_FEEDFORWARD = 3, 5, 32, 64
        mf.DROPOUT, mf.TRAIN_NUM_POINTS = 0.0, 256
        mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT = 2.0, 5.0, 5.0
        cfg.MODEL.FC_CLIP.EMBED_DIM = 16
        shapes = {f"res{i + 2}": ShapeSpec(channels=8, stride=4 * 2**i) for i in range(4)}
        head = SEM_SEG_HEADS_REGISTRY.get("FCCLIPHead")(cfg, shapes)
        criterion = SetCriterion(cfg)
        feats = {f"res{i + 2}": torch.randn(1, 8, 16 // 2**i, 16 // 2**i) for i in range(4)}
        text = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
        masks = torch.zeros(2, 64, 64)
        masks[0, :, :32] = 1
        masks[1, :, 32:] = 1
        targets = [{"labels": torch.tensor([0, 2]), "masks": masks}]
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)

        def weighted_loss():
            losses = criterion(head(feats, text, [1, 1, 1]), targets)
            return sum(losses[k] * criterion.weight_dict[k] for k in losses)

        first = float(weighted_loss().detach())
        for _ in range(25):
            optimizer.zero_grad()
            loss = weighted_loss()
            loss.backward()
            optimizer.step()
        last = float(weighted_loss().detach())
    finally:
        torch.set_num_threads(threads)
    assert last < 0.6 * first, (first, last)
