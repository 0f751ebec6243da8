"""``DATABASE_BUILD``: the keys of ``tools/build_database.py`` (paper §2.1).

The CLIP encoder is *not* configured here: the build uses ``MODEL.FC_CLIP.CLIP_MODEL_NAME`` and
``MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS`` and the test-time resize ``INPUT.MIN_SIZE_TEST`` /
``INPUT.MAX_SIZE_TEST`` of the model config, so a database and the model that searches it share
one encoder and one input pipeline by construction.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_database_build_config"]


def add_database_build_config(cfg: CN) -> None:
    """Add the ``DATABASE_BUILD`` block (no-op if it is already there)."""
    if hasattr(cfg, "DATABASE_BUILD"):
        return
    cfg.DATABASE_BUILD = CN()
    # Database directory (manifest + shards); a build into an existing one resumes or adds.
    cfg.DATABASE_BUILD.OUTPUT_DIR = ""
    # Images per shard: the unit of atomic writes, resumption and work split across ranks.
    cfg.DATABASE_BUILD.SHARD_SIZE = 64
    # Images of a shard that go through the models together (memory): up to this many share one
    # forward of Grounding DINO (images with equal resized sizes), of SAM's image encoder (any
    # images: SAM pads all to 1024 x 1024) and of CLIP (equal padded sizes). 1: one forward per
    # image and model. The rows do not depend on it (up to float rounding).
    cfg.DATABASE_BUILD.BATCH_SIZE = 4
    # Feature storage dtype: "float16" or "float32".
    cfg.DATABASE_BUILD.DTYPE = "float16"
    # Mask source: "GroundingDinoSamProposals" (the paper) or "GroundTruthProposals" (ablation;
    # needs a panoptic dataset source).
    cfg.DATABASE_BUILD.PROPOSALS = "GroundingDinoSamProposals"
    # Stop after this many shards in this run (0: no limit); lets a job fit a time slot.
    cfg.DATABASE_BUILD.MAX_SHARDS_PER_RUN = 0
    # Seconds to wait after each shard (0 in real builds; tests use it to kill mid-build).
    cfg.DATABASE_BUILD.SHARD_DELAY_S = 0.0

    cfg.DATABASE_BUILD.SOURCE = CN()
    # "dataset" (a registered detectron2 dataset; labels from its annotations), "open_images"
    # (image folder + image-level labels CSV + class descriptions CSV), "folder" (images + a
    # CSV/JSON of labels) or "webdataset" (tar shards, see URLS).
    cfg.DATABASE_BUILD.SOURCE.TYPE = "dataset"
    # Registered dataset name for TYPE "dataset".
    cfg.DATABASE_BUILD.SOURCE.DATASET = "openvocab_ade20k_panoptic_train"
    # Image directory (TYPE "open_images" and "folder").
    cfg.DATABASE_BUILD.SOURCE.IMAGE_DIR = ""
    # Labels: Open Images "ImageID,Source,LabelName,Confidence" CSV, or for "folder" a CSV with
    # columns image,labels ("cat;sofa") or a JSON {"image file": ["cat", "sofa"]}.
    cfg.DATABASE_BUILD.SOURCE.LABELS_FILE = ""
    # Open Images class-descriptions CSV (MID,DisplayName).
    cfg.DATABASE_BUILD.SOURCE.CLASS_DESCRIPTIONS = ""
    # Keep only these classes (names; Open Images also accepts MIDs); empty: all classes.
    cfg.DATABASE_BUILD.SOURCE.CLASSES = []
    # Open Images labels with Confidence below this are negatives and are dropped.
    cfg.DATABASE_BUILD.SOURCE.MIN_CONFIDENCE = 0.5
    # Use at most this many images (first ones in sorted id order; 0: all).
    cfg.DATABASE_BUILD.SOURCE.MAX_IMAGES = 0
    # TYPE "webdataset": tar shards, brace-expanded ("/data/oi/{00000..00899}.tar"; several
    # patterns separated by spaces). Each sample: an image (jpg/jpeg/png/webp) and its labels as
    # json (a list of names, or an object with a "labels" list) or txt (one name per line or
    # ";"-separated). One tar = one chunk = one database shard.
    cfg.DATABASE_BUILD.SOURCE.URLS = ""

    # Array jobs (slurm --array, Kubernetes indexed jobs): job SHARD_ID of NUM_SHARDS builds every
    # NUM_SHARDS-th chunk into OUTPUT_DIR/parts/part-<id>-of-<n>; "inspect_database.py finalize
    # OUTPUT_DIR" joins the parts. Each job may itself run torch.distributed ranks.
    # tools/build_database.py --shard-id/--num-shards set these.
    cfg.DATABASE_BUILD.ARRAY_JOB = CN()
    cfg.DATABASE_BUILD.ARRAY_JOB.SHARD_ID = 0
    cfg.DATABASE_BUILD.ARRAY_JOB.NUM_SHARDS = 1

    cfg.DATABASE_BUILD.GROUNDING_DINO = CN()
    # Hugging Face hub name or local directory of GroundingDinoForObjectDetection + processor.
    cfg.DATABASE_BUILD.GROUNDING_DINO.MODEL = "IDEA-Research/grounding-dino-base"
    # Keep boxes whose best class-token probability exceeds BOX_THRESHOLD ...
    cfg.DATABASE_BUILD.GROUNDING_DINO.BOX_THRESHOLD = 0.35
    # ... and TEXT_THRESHOLD (Grounding DINO's two thresholds).
    cfg.DATABASE_BUILD.GROUNDING_DINO.TEXT_THRESHOLD = 0.25
    # Per-class box NMS IoU threshold (1.0 disables).
    cfg.DATABASE_BUILD.GROUNDING_DINO.NMS_THRESHOLD = 0.8
    # At most this many boxes per image (best scores first).
    cfg.DATABASE_BUILD.GROUNDING_DINO.MAX_DETECTIONS = 100

    cfg.DATABASE_BUILD.SAM = CN()
    # "segment_anything" (MODEL_TYPE + local CHECKPOINT) or "transformers" (SamModel: HF_MODEL).
    cfg.DATABASE_BUILD.SAM.BACKEND = "segment_anything"
    # transformers backend: hub name or local directory of SamModel + SamProcessor.
    cfg.DATABASE_BUILD.SAM.HF_MODEL = "facebook/sam-vit-base"
    # segment-anything model type: "vit_b" (the paper's), "vit_l", "vit_h" ("tiny": tests only).
    cfg.DATABASE_BUILD.SAM.MODEL_TYPE = "vit_b"
    # Local SAM checkpoint (.pth state dict, loaded with weights_only=True); "" = random weights.
    cfg.DATABASE_BUILD.SAM.CHECKPOINT = ""
    # Ask for 3 masks per box and keep the best by predicted IoU.
    cfg.DATABASE_BUILD.SAM.MULTIMASK = False
