#!/usr/bin/env python
"""RetCLIP in the browser: upload a photo, type a vocabulary, move α/β/γ, click a segment.

    python tools/web_demo.py --config-file configs/retclip/retclip_convnext_large_ade20k.yaml \
        --database /data/databases/ade20k_train_convnext_large_d_320 \
        MODEL.WEIGHTS /weights/fcclip_cocopan.pth

Serves http://127.0.0.1:7860 (this machine only; --host 0.0.0.0 to open it to the network,
--share for a temporary public Gradio link: neither is on by default). Needs `pip install gradio`.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import retclip  # noqa: E402  (light: the detectron2-facing modules, imported after parsing, apply the compat steps)
from retclip.utils.cli import UserError, run_tool  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a configs/fcclip or configs/retclip YAML")
    parser.add_argument("--database", default=None, help="feature database (sets MODEL.RETCLIP.DATABASE)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--top-neighbours", type=int, default=5, help="neighbours shown per segment")
    parser.add_argument("--examples-dir", default=None, help="where to write the example photos (default: a temp dir)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def _demo_tool():
    """tools/demo.py as a module (``tools`` is not a package, and detectron2 ships one named so)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("retclip_tools_demo", os.path.join(os.path.dirname(__file__), "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_session(args: argparse.Namespace):
    """Config -> model (weights loaded) -> :class:`WebDemoSession`."""
    from detectron2.modeling import build_model

    from retclip.retrieval import EncoderFingerprint, RetrievalConfig
    from retclip.web_demo.session import WebDemoSession
    try:
        cfg = _demo_tool().setup_cfg(args)  # one config recipe for both demos
    except ValueError as e:
        raise UserError(str(e)) from e
    try:
        model = build_model(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from e
    if cfg.MODEL.WEIGHTS:
        from retclip.checkpoint import RetCLIPCheckpointer

        RetCLIPCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logging.getLogger("retclip.web_demo").warning("MODEL.WEIGHTS is empty: random weights, meaningless labels")
    retrieval = encoder = None
    if cfg.MODEL.META_ARCHITECTURE == "RetCLIP":
        retrieval = RetrievalConfig.from_cfg(cfg, device=cfg.MODEL.DEVICE)
        encoder = EncoderFingerprint.from_open_clip(
            cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME, cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS, model.backbone.dim_latent
        )
    return WebDemoSession(model, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, args.top_neighbours,
                          retrieval_config=retrieval, encoder=encoder)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    from detectron2.utils.logger import setup_logger

    setup_logger(name="retclip")
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        raise UserError("the web demo needs Gradio: pip install gradio") from e
    from retclip.web_demo.app import build_app, write_example_photos

    session = build_session(args)
    examples = write_example_photos(args.examples_dir)
    app = build_app(session, examples)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=args.host, server_port=args.port, share=args.share,
               allowed_paths=[os.path.dirname(examples[0])], show_error=False)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
