"""detectron2's launcher flags without importing detectron2, so ``--help`` stays fast.

``detectron2.engine.default_argument_parser`` lives in a module that imports the whole modeling
stack (and torch): several seconds before a tool can print its usage. This parser accepts the
same flags with the same defaults (``tests/test_train_net.py`` compares them), and the tools
import detectron2 only after the arguments are parsed.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

__all__ = ["launcher_argument_parser"]


def launcher_argument_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """``--config-file``, ``--resume``, ``--eval-only``, ``--num-gpus``, ``--num-machines``,
    ``--machine-rank``, ``--dist-url`` and trailing ``KEY VALUE`` config overrides."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint (model, optimizer, scheduler, iteration)",
    )
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine*")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument(
        "--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)"
    )
    # detectron2's deterministic per-user port: an orphan process shows up as a port in use.
    port = 2**15 + 2**14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2**14
    parser.add_argument(
        "--dist-url", default=f"tcp://127.0.0.1:{port}",
        help="initialization URL for the torch.distributed backend (tcp://HOST:PORT)",
    )
    parser.add_argument(
        "opts", default=None, nargs=argparse.REMAINDER,
        help='config overrides at the end of the command: "PATH.KEY VALUE" pairs',
    )
    return parser
