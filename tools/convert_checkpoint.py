#!/usr/bin/env python
"""Convert a pickled checkpoint (.pkl) into a .pth that RetCLIP loads with weights_only=True.

    python tools/convert_checkpoint.py --allow-pickle model_final.pkl model_final.pth

RetCLIP never unpickles weights by itself: unpickling runs whatever code the file holds. This
command does it once, on your explicit --allow-pickle, for a file you trust (detectron2 model-zoo
.pkl files hold {"model": {name: numpy array}}). It writes {"model": {name: tensor}} atomically
and checks that the result loads with torch.load(weights_only=True).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retclip.utils.cli import UserError, run_tool  # noqa: E402  (light: --help imports no torch)


def _tensors(state):
    import numpy as np
    import torch

    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise UserError(f"key {key!r} holds a {type(value).__name__}, not an array or tensor")
        out[key] = value
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--allow-pickle", action="store_true",
                   help="required: you trust the input file (unpickling it can run code)")
    p.add_argument("input", help="the .pkl checkpoint")
    p.add_argument("output", help="the .pth to write (refused if it exists)")
    args = p.parse_args(argv)
    if not args.allow_pickle:
        raise UserError(f"{args.input}: unpickling can run code stored in the file; "
                        "pass --allow-pickle if you trust it")
    if os.path.exists(args.output):
        raise UserError(f"{args.output} exists; choose another output file")
    import pickle

    import torch

    from retclip.checkpoint import read_weights_file
    from retclip.utils.fileio import atomic_path

    with open(args.input, "rb") as f:
        loaded = pickle.load(f, encoding="latin1")  # noqa: S301 - explicitly allowed above
    if not isinstance(loaded, dict):
        raise UserError(f"{args.input} holds a {type(loaded).__name__}, not a checkpoint dict")
    state = loaded.get("model", loaded.get("blobs", loaded))
    with atomic_path(args.output) as tmp:
        torch.save({"model": _tensors(state)}, tmp)
    n = len(read_weights_file(args.output)["model"])  # loads with weights_only=True
    print(f"{args.output}: {n} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
