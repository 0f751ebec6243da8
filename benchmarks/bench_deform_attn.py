"""Time of the pure-PyTorch multi-scale deformable attention at FC-CLIP's encoder sizes.

Compares ``ms_deform_attn_pytorch`` (one ``grid_sample`` per level, weighted sum accumulated level
by level) with the textbook formulation that stacks the samples of all levels before weighting
(Deformable DETR's reference code path), which holds L times more sampled values at once.
Sizes: 8 heads x 32 channels, 3 levels (1/32, 1/16, 1/8 of the image), 4 points, one query per
pixel, as in FC-CLIP's pixel decoder.

    python benchmarks/bench_deform_attn.py --sizes 512 1024 --device cpu

Prints a markdown table; numbers depend on the machine and its load (say which).
"""

import argparse
import time

import retclip.modeling  # noqa: F401  (compat steps, then registration, before detectron2)
import torch
import torch.nn.functional as F

from retclip.modeling.pixel_decoder.deform_attn_function import ms_deform_attn_pytorch


def stacked_levels(value, spatial_shapes, locations, weights):
    """All levels' samples stacked, then weighted and summed (the reference formulation)."""
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    per_level = value.split([h * w for h, w in spatial_shapes.tolist()], dim=1)
    samples = []
    for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(batch * heads, dim, h, w)
        g = (2 * locations[:, :, :, lvl] - 1).transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    wts = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * wts).sum(-1)
    return out.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="image sides")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print("| image | queries | ours (s) | stacked (s) | stacked / ours | max abs diff |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        shapes = torch.tensor([[size // s, size // s] for s in (32, 16, 8)], device=device)
        total = int((shapes[:, 0] * shapes[:, 1]).sum())
        value = torch.randn(1, total, 8, 32, device=device)
        locations = torch.rand(1, total, 8, 3, 4, 2, device=device)
        weights = torch.rand(1, total, 8, 3, 4, device=device).softmax(-1)
        with torch.no_grad():
            ours = _time(
                lambda: ms_deform_attn_pytorch(value, shapes, locations, weights),
                args.repeats,
                device,
            )
            ref = _time(
                lambda: stacked_levels(value, shapes, locations, weights), args.repeats, device
            )
            diff = (
                (
                    ms_deform_attn_pytorch(value, shapes, locations, weights)
                    - stacked_levels(value, shapes, locations, weights)
                )
                .abs()
                .max()
            )
        print(
            f"| {size}x{size} | {total} | {ours:.3f} | {ref:.3f} | {ref / ours:.2f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
