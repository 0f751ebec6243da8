"""Small, deterministic building blocks for tests and for trying RetCLIP without downloads:
tiny open_clip model configs and a synthetic COCO-panoptic-format dataset generator."""
