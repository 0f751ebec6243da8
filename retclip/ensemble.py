"""Ensembles of the in-vocabulary, CLIP and retrieval classifiers.

Two forms, one function each, registered by name in :data:`ENSEMBLE_MODES` (the values of
``MODEL.ENSEMBLE.MODE``); FC-CLIP, RetCLIP and the score-cache sweep all reach them through
:func:`ensemble_log_probabilities`, so a mode registered once is available to all three:

* :func:`geometric_ensemble` is FC-CLIP's released form (after ODISE): a per-class geometric mean
  of the in-vocabulary and CLIP probabilities, computed with the same expression order as FC-CLIP
  so that its outputs are bit-identical. Retrieval enters through the out-of-vocabulary
  probability; with ``gamma == 0`` the retrieval maths is skipped and the result is FC-CLIP's.
* :func:`arithmetic_ensemble` is the formula of the RetCLIP paper (§2.2): weighted sums of scores.

Both take logits over the K test classes plus a void column (K+1, void last), return
probabilities (..., K+1) whose first K columns are scaled by (1 - void probability) and whose last
column is the void probability, as FC-CLIP does. :func:`training_free_scores` is the variant
without an in-vocabulary classifier (and without void).

Plain PyTorch: this module must not import detectron2 (see tests/retrieval/test_imports.py).
"""
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from .utils.registry import NamedRegistry

__all__ = [
    "ENSEMBLE_MODES",
    "LOG_EPS",
    "TRAINING_FREE_MODES",
    "arithmetic_ensemble",
    "ensemble_log_probabilities",
    "ensemble_probabilities",
    "geometric_ensemble",
    "training_free_scores",
]

#: Ensemble modes (``MODEL.ENSEMBLE.MODE``). An entry is called with keyword arguments
#: ``in_vocab_logits, clip_logits`` (..., K+1), ``seen`` (K,) bool, ``alpha, beta, gamma`` floats,
#: ``valid`` (...) bool or None, ``retrieval_scores`` (..., K) or None (None when gamma is 0) and
#: ``retrieval_available`` (K,) bool or None, and returns (..., K+1) probabilities, void last,
#: the first K scaled by (1 - void probability).
ENSEMBLE_MODES: NamedRegistry[Callable[..., Tensor]] = NamedRegistry(
    "ensemble mode", "MODEL.ENSEMBLE.MODE"
)

#: Modes of :func:`training_free_scores` (``MODEL.TRAINING_FREE.MODE``): the paper's "CLIP",
#: "Retrieval" and "RetCLIP" rows. An entry is called as ``fn(s_clip, s_ret, available, gamma)``
#: with probabilities s_clip (..., K), s_ret (..., K) or None, available (K,) bool or None.
TRAINING_FREE_MODES: NamedRegistry[Callable[..., Tensor]] = NamedRegistry(
    "training-free mode", "MODEL.TRAINING_FREE.MODE"
)

#: The models' class log-probabilities are ``log(probabilities + LOG_EPS)`` (FC-CLIP's form).
LOG_EPS = 1e-8

#: Scores below this are raised to it before the geometric form takes a power of them, so that a
#: class without any retrieved neighbour (s_ret = 0) is strongly down-weighted but not log(0).
RETRIEVAL_FLOOR = 1e-8


def _check_weight(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _check_class_mask(name: str, mask: Tensor, num_classes: int) -> Tensor:
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != (num_classes,):
        raise ValueError(f"{name} must have shape ({num_classes},), got {tuple(mask.shape)}")
    return mask


def _check_logits(in_vocab_logits: Tensor, clip_logits: Tensor) -> int:
    if in_vocab_logits.shape != clip_logits.shape:
        raise ValueError(
            "in_vocab_logits and clip_logits must have the same shape (..., K+1), got "
            f"{tuple(in_vocab_logits.shape)} and {tuple(clip_logits.shape)}"
        )
    if in_vocab_logits.shape[-1] < 2:
        raise ValueError(
            f"logits need at least one class plus void in the last dim, got {in_vocab_logits.shape}"
        )
    return in_vocab_logits.shape[-1] - 1


def _check_retrieval(
    retrieval_scores: Optional[Tensor],
    retrieval_available: Optional[Tensor],
    lead_shape: torch.Size,
    num_classes: int,
) -> Tuple[Tensor, Tensor]:
    """Validate s_ret (..., K); return it and the per-class availability mask (K,)."""
    if retrieval_scores is None:
        raise ValueError("gamma > 0 needs retrieval_scores (..., K)")
    if retrieval_scores.shape != (*lead_shape, num_classes):
        raise ValueError(
            f"retrieval_scores must have shape {(*lead_shape, num_classes)}, "
            f"got {tuple(retrieval_scores.shape)}"
        )
    if retrieval_available is None:
        available = torch.ones(num_classes, dtype=torch.bool, device=retrieval_scores.device)
    else:
        available = _check_class_mask("retrieval_available", retrieval_available, num_classes)
    return retrieval_scores, available


def _check_valid(valid: Optional[Tensor], lead_shape: torch.Size) -> None:
    if valid is None:
        return
    if valid.dtype != torch.bool or valid.shape != lead_shape:
        raise ValueError(
            f"valid must be a bool tensor of shape {tuple(lead_shape)}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )


def _check_ensemble_inputs(
    in_vocab_logits: Tensor, clip_logits: Tensor, seen: Tensor, alpha: float, beta: float,
    gamma: float, valid: Optional[Tensor],
) -> Tuple[int, Tensor, torch.Size]:
    """Checks shared by both ensembles; returns (K, seen mask, leading shape)."""
    num_classes = _check_logits(in_vocab_logits, clip_logits)
    seen = _check_class_mask("seen", seen, num_classes)
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        _check_weight(name, value)
    lead_shape = in_vocab_logits.shape[:-1]
    _check_valid(valid, lead_shape)
    return num_classes, seen, lead_shape


def _with_void(scores: Tensor, in_vocab_logits: Tensor) -> Tensor:
    """[scores * (1 - v), v] with v the void probability of the in-vocabulary classifier."""
    void_prob = torch.softmax(in_vocab_logits, dim=-1)[..., -1:]
    return torch.cat([scores * (1.0 - void_prob), void_prob], dim=-1)


@ENSEMBLE_MODES.register("geometric")
def geometric_ensemble(
    in_vocab_logits: Tensor,
    clip_logits: Tensor,
    seen: Tensor,
    alpha: float,
    beta: float,
    valid: Optional[Tensor] = None,
    retrieval_scores: Optional[Tensor] = None,
    gamma: float = 0.0,
    retrieval_available: Optional[Tensor] = None,
) -> Tensor:
    """FC-CLIP's geometric ensemble, optionally with retrieval in the out-of-vocabulary term.

    s_k = log(p_in_k^(1-a_k) * p_out_k^a_k), a_k = alpha for seen classes and beta for unseen ones
    (0 where ``valid`` is False), evaluated as FC-CLIP does (pow, multiply, log) so that outputs
    are bit-identical to its code. Where FC-CLIP blends the seen and unseen branches by
    multiplying with the 0/1 overlap mask (which turns a -inf log into NaN), this picks the branch
    with ``torch.where``: identical for every finite value, and no NaN when a probability
    underflows to 0.

    With ``gamma > 0``, p_out is replaced for classes with retrieval by
    p_oov = normalise(s_ret^gamma * p_out^(1-gamma)) (normalised over the K classes; classes
    without retrieval keep p_out before the normalisation). s_ret is floored at
    :data:`RETRIEVAL_FLOOR` first, so a class no neighbour voted for is not log(0).
    ``gamma == 0`` skips this entirely and returns FC-CLIP's result exactly.

    Args:
        in_vocab_logits: (..., K+1) logits of the in-vocabulary classifier, void last.
        clip_logits: (..., K+1) logits of the CLIP classifier; its void column is discarded.
        seen: (K,) bool, True for test classes seen in training.
        alpha: exponent of p_out for seen classes.
        beta: exponent of p_out for unseen classes.
        valid: optional (...) bool, False for queries whose mask is empty; their a is 0, so
            their (possibly NaN) CLIP probabilities are ignored (pow(x, 0) == 1).
        retrieval_scores: (..., K) s_ret in [0, 1]; needed when gamma > 0.
        gamma: weight of retrieval in the out-of-vocabulary term.
        retrieval_available: optional (K,) bool, classes some database covers (others use
            p_out alone); default all True.

    Returns:
        (..., K+1) probabilities: [softmax(s) * (1 - v), v], v = softmax(in_vocab_logits)[..., -1].
    """
    num_classes, seen, lead_shape = _check_ensemble_inputs(
        in_vocab_logits, clip_logits, seen, alpha, beta, gamma, valid
    )

    p_in = in_vocab_logits[..., :-1].softmax(-1)
    p_out = clip_logits[..., :-1].softmax(-1)
    if gamma != 0.0:
        s_ret, available = _check_retrieval(
            retrieval_scores, retrieval_available, lead_shape, num_classes
        )
        s_ret = s_ret.to(p_out.dtype).clamp_min(RETRIEVAL_FLOOR)
        mixed = s_ret**gamma * p_out ** (1.0 - gamma)
        mixed = torch.where(available.to(p_out.device), mixed, p_out)
        p_out = mixed / mixed.sum(-1, keepdim=True).clamp_min(torch.finfo(mixed.dtype).tiny)

    if valid is None:
        a_seen: Union[float, Tensor] = alpha
        a_unseen: Union[float, Tensor] = beta
    else:
        # FC-CLIP's ENSEMBLE_ON_VALID_MASK path: per-element exponent tensors.
        valid_f = valid.to(p_in.dtype).unsqueeze(-1)
        a_seen = torch.ones_like(p_in) * alpha * valid_f
        a_unseen = torch.ones_like(p_in) * beta * valid_f
    logits_seen = (p_in ** (1 - a_seen) * p_out**a_seen).log()
    logits_unseen = (p_in ** (1 - a_unseen) * p_out**a_unseen).log()
    scores = torch.where(seen.to(p_in.device), logits_seen, logits_unseen)
    return _with_void(scores.softmax(-1), in_vocab_logits)


@ENSEMBLE_MODES.register("arithmetic")
def arithmetic_ensemble(
    in_vocab_logits: Tensor,
    clip_logits: Tensor,
    retrieval_scores: Optional[Tensor],
    seen: Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    valid: Optional[Tensor] = None,
    retrieval_available: Optional[Tensor] = None,
) -> Tensor:
    """The RetCLIP paper's ensemble (§2.2), a weighted sum of scores.

    s_oov_k = g_k * s_ret_k + (1 - g_k) * s_clip_k, g_k = gamma where retrieval is available for
    class k, else 0; s_k = a_k * s_oov_k + (1 - a_k) * s_iv_k, a_k = alpha (seen) or beta
    (unseen), 0 where ``valid`` is False. s is renormalised to sum 1 over the K classes: with
    per-class weights (alpha != beta, or gamma on some classes only) the weighted sum of two
    distributions no longer sums to 1; when alpha == beta and gamma == 0 it is a no-op.

    Args:
        in_vocab_logits: (..., K+1) logits of the in-vocabulary classifier, void last.
        clip_logits: (..., K+1) logits of the CLIP classifier; its void column is discarded.
        retrieval_scores: (..., K) s_ret in [0, 1]; may be None when gamma == 0.
        seen: (K,) bool, True for classes seen in training.
        alpha, beta, gamma: the paper's weights, each in [0, 1].
        valid: optional (...) bool; False gives a = 0 (in-vocabulary scores alone).
        retrieval_available: optional (K,) bool; default all True.

    Returns:
        (..., K+1) probabilities: [s * (1 - v), v], v = softmax(in_vocab_logits)[..., -1].
    """
    num_classes, seen, lead_shape = _check_ensemble_inputs(
        in_vocab_logits, clip_logits, seen, alpha, beta, gamma, valid
    )

    s_iv = in_vocab_logits[..., :-1].softmax(-1)
    s_oov = clip_logits[..., :-1].softmax(-1)
    if gamma != 0.0:
        s_ret, available = _check_retrieval(
            retrieval_scores, retrieval_available, lead_shape, num_classes
        )
        g = available.to(s_oov) * gamma
        s_oov = g * s_ret.to(s_oov) + (1.0 - g) * s_oov
    seen_f = seen.to(s_iv)
    a = seen_f * alpha + (1.0 - seen_f) * beta
    if valid is not None:
        a = a * valid.to(s_iv).unsqueeze(-1)
    scores = a * s_oov + (1.0 - a) * s_iv
    scores = scores / scores.sum(-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)
    return _with_void(scores, in_vocab_logits)


def ensemble_probabilities(
    mode: str,
    inputs: Mapping[str, Any],
    alpha: float,
    beta: float,
    gamma: float,
) -> Tensor:
    """The ensemble ``mode`` (a name in :data:`ENSEMBLE_MODES`) on one set of ensemble inputs.

    The one place where the models' and the sweep's ensemble inputs meet the registered
    functions: without retrieval scores (a model without a database) gamma is 0, and retrieval
    inputs are passed only when gamma > 0, as the models always did.

    Args:
        mode: registered ensemble mode.
        inputs: mapping with "in_vocab_logits", "clip_logits" (..., K+1), "seen" (K,) bool and
            optionally "valid" (...) bool, "retrieval_scores" (..., K), "retrieval_available"
            (K,) bool (absent or None: not used). A score-cache image's tensors have this form.
        alpha, beta, gamma: ensemble weights.
    Returns:
        (..., K+1) probabilities, void last.
    """
    fn = ENSEMBLE_MODES.get(mode)
    scores = inputs.get("retrieval_scores")
    if scores is None:
        gamma = 0.0
    use_retrieval = gamma > 0
    return fn(
        in_vocab_logits=inputs["in_vocab_logits"],
        clip_logits=inputs["clip_logits"],
        seen=inputs["seen"],
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        valid=inputs.get("valid"),
        retrieval_scores=scores if use_retrieval else None,
        retrieval_available=inputs.get("retrieval_available") if use_retrieval else None,
    )


def ensemble_log_probabilities(
    mode: str, inputs: Mapping[str, Any], alpha: float, beta: float, gamma: float
) -> Tensor:
    """``log(ensemble_probabilities(...) + LOG_EPS)``: the class log-probabilities (``mask_cls``)
    that FC-CLIP, RetCLIP and the sweep hand to post-processing."""
    return torch.log(ensemble_probabilities(mode, inputs, alpha, beta, gamma) + LOG_EPS)


def _checked_retrieval(
    s_clip: Tensor, retrieval_scores: Optional[Tensor], retrieval_available: Optional[Tensor]
) -> Tuple[Tensor, Tensor]:
    s_ret, available = _check_retrieval(
        retrieval_scores, retrieval_available, s_clip.shape[:-1], s_clip.shape[-1]
    )
    return s_ret.to(s_clip), available


@TRAINING_FREE_MODES.register("clip")
def _clip_only(
    s_clip: Tensor, retrieval_scores: Optional[Tensor], available: Optional[Tensor], gamma: float
) -> Tensor:
    return s_clip


@TRAINING_FREE_MODES.register("retclip")
def _clip_and_retrieval(
    s_clip: Tensor, retrieval_scores: Optional[Tensor], available: Optional[Tensor], gamma: float
) -> Tensor:
    s_ret, available = _checked_retrieval(s_clip, retrieval_scores, available)
    g = available.to(s_clip) * gamma
    return g * s_ret + (1.0 - g) * s_clip


@TRAINING_FREE_MODES.register("retrieval")
def _retrieval_only(
    s_clip: Tensor, retrieval_scores: Optional[Tensor], available: Optional[Tensor], gamma: float
) -> Tensor:
    """s_ret where a database covers the class, s_clip where none does: "retclip" at gamma 1."""
    return _clip_and_retrieval(s_clip, retrieval_scores, available, 1.0)


def training_free_scores(
    clip_logits_or_probs: Tensor,
    retrieval_scores: Optional[Tensor],
    mode: str,
    gamma: float,
    retrieval_available: Optional[Tensor] = None,
    clip_is_logits: bool = True,
) -> Tensor:
    """Class scores of the training-free variant, which has no in-vocabulary classifier or void.

    ``mode`` picks the paper's rows: "clip" (s = s_clip), "retrieval" (s = s_ret) and "retclip"
    (s = s_oov = g_k * s_ret + (1 - g_k) * s_clip, g_k = gamma where retrieval is available for
    class k, else 0). Classes that no database covers fall back to s_clip in "retrieval" too. Scores are not renormalised: each lies in [0, 1] (s_ret from min-max
    scoring with the default "max" aggregation), and post-processing compares them across queries.

    Args:
        clip_logits_or_probs: (..., K) CLIP logits (softmaxed here) or probabilities
            (``clip_is_logits=False``). No void column.
        retrieval_scores: (..., K) s_ret; may be None for mode "clip".
        mode: a name in :data:`TRAINING_FREE_MODES`.
        gamma: retrieval weight for mode "retclip", in [0, 1].
        retrieval_available: optional (K,) bool; default all True.

    Returns:
        (..., K) scores.
    """
    fn = TRAINING_FREE_MODES.get(mode)
    _check_weight("gamma", gamma)
    s_clip = clip_logits_or_probs.softmax(-1) if clip_is_logits else clip_logits_or_probs
    return fn(s_clip, retrieval_scores, retrieval_available, gamma)
