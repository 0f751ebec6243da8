#!/usr/bin/env python
"""Convert a pickled checkpoint (.pkl) into a .pth that RetCLIP loads with weights_only=True.

    python tools/convert_checkpoint.py --allow-pickle model_final.pkl model_final.pth

RetCLIP never unpickles weights by itself: unpickling can run whatever code the file holds. This
command does it once, on your explicit --allow-pickle, for a file you trust (detectron2 model-zoo
.pkl files hold {"model": {name: numpy array}}). Even then it reconstructs only numpy arrays and
plain containers: a file that asks for any other callable (os.system, a class of some package) is
refused, naming it, before anything runs. It writes {"model": {name: tensor}} atomically and
checks that the result loads with torch.load(weights_only=True).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from retclip.utils.cli import UserError, run_tool  # noqa: E402  (light: --help imports no torch)


#: What a pickle of numpy arrays in dicts asks for (numpy 1 and numpy 2 module names, Python 2
#: protocol-2 files included); anything else could run code when called.
_ARRAY_GLOBALS = frozenset(
    [
        (core, name)
        for core in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    ]
    + [(numeric, "_frombuffer") for numeric in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")]
    # protocol 2 written by Python 3 stores bytes as _codecs.encode(text, "latin1")
    + [("_codecs", "encode")]
)


def _load_arrays(path: str):
    """Unpickle ``path`` reconstructing only numpy arrays and plain containers."""
    import pickle

    class ArrayUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in _ARRAY_GLOBALS:
                raise UserError(
                    f"{path}: the pickle asks for {module}.{name}, which a checkpoint of arrays "
                    "does not need; refused without calling it (it could run code)"
                )
            return super().find_class(module, name)

    with open(path, "rb") as f:
        try:
            return ArrayUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise UserError(f"{path}: not a readable pickle ({e})") from e


def _tensors(state):
    import numpy as np
    import torch

    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            try:  # a C-contiguous copy that keeps 0-d arrays 0-d (np.ascontiguousarray: 1-d)
                value = torch.from_numpy(np.array(value, order="C", copy=True))
            except TypeError as e:  # object or string arrays
                raise UserError(f"key {key!r} holds a {value.dtype} array, not numbers ({e})") from e
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
    import torch

    from retclip.checkpoint import read_weights_file
    from retclip.utils.fileio import atomic_path

    loaded = _load_arrays(args.input)
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
