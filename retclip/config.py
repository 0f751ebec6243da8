"""Every config key RetCLIP adds to detectron2's, with its default and what it means.

``add_retclip_config(cfg)`` is the only place keys are born. It covers the keys of Mask2Former and
FC-CLIP that our models read (same names and defaults), RetCLIP's own ``MODEL.ENSEMBLE``,
``MODEL.RETCLIP`` and ``MODEL.TRAINING_FREE`` blocks, the score cache and ``DATABASE_BUILD``.
Paper symbols are named in the comments (alpha, beta, gamma, k). A key that nothing reads is not
declared, except the three that FC-CLIP's released YAMLs set (marked below), so those still load.

Renamed keys: FC-CLIP's ``MODEL.FC_CLIP.GEOMETRIC_ENSEMBLE_ALPHA/BETA`` and the former
``MODEL.RETCLIP.ENSEMBLE_MODE/ALPHA/BETA/GAMMA`` are now ``MODEL.ENSEMBLE.*`` (one key per
hyper-parameter); a YAML or command line that sets an old name fails naming the new one.
"""
from . import compat

compat.apply_all()  # before detectron2 is first imported

from detectron2.config import CfgNode as CN  # noqa: E402

#: Old key -> the key that replaced it (a config setting the old one is refused, naming the new).
RENAMED_KEYS = {
    "MODEL.FC_CLIP.GEOMETRIC_ENSEMBLE_ALPHA": "MODEL.ENSEMBLE.ALPHA",
    "MODEL.FC_CLIP.GEOMETRIC_ENSEMBLE_BETA": "MODEL.ENSEMBLE.BETA",
    "MODEL.RETCLIP.ENSEMBLE_MODE": "MODEL.ENSEMBLE.MODE",
    "MODEL.RETCLIP.ALPHA": "MODEL.ENSEMBLE.ALPHA",
    "MODEL.RETCLIP.BETA": "MODEL.ENSEMBLE.BETA",
    "MODEL.RETCLIP.GAMMA": "MODEL.ENSEMBLE.GAMMA",
}


def _add_released_config_keys(cfg: CN) -> None:
    """Keys that FC-CLIP's released base YAMLs set but no FC-CLIP code reads ("not used" there
    too); declared only so that those YAMLs load. Nothing here reads them."""
    # Base-COCO-PanopticSegmentation.yaml (a DeepLab ResNet's keys; FC-CLIP's CLIP ignores them).
    if not hasattr(cfg.MODEL.RESNETS, "STEM_TYPE"):
        cfg.MODEL.RESNETS.STEM_TYPE = "basic"
        cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]


def add_maskformer2_config(cfg: CN) -> None:
    """Keys of Mask2Former that FC-CLIP configs use, with Mask2Former's defaults."""
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale jitter (LSJ) of the COCO panoptic training mapper.
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0

    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    # Set by FC-CLIP's released maskformer2_R50_bs16_50ep.yaml (0); accepted so it loads, read by
    # nothing (released configs).
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # Point-sampled mask losses (PointRend-style importance sampling).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # Sampling points per head and level of the deformable-attention encoder (its heads are
    # MASK_FORMER.NHEADS, as in FC-CLIP).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4


def add_fcclip_config(cfg: CN) -> None:
    """``MODEL.FC_CLIP``: the frozen CLIP backbone and its mask-pooled classifier."""
    cfg.MODEL.FC_CLIP = CN()
    # open_clip architecture name and weights: a pretrained tag, a local file, or "" (random).
    cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME = "convnext_large_d_320"
    cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS = "laion2b_s29b_b131k_ft_soup"
    cfg.MODEL.FC_CLIP.EMBED_DIM = 768
    # Use only the in-vocabulary classifier for queries whose mask is empty at CLIP resolution.
    cfg.MODEL.FC_CLIP.ENSEMBLE_ON_VALID_MASK = False


def add_retclip_keys(cfg: CN) -> None:
    """``MODEL.RETCLIP``: the retrieval path and the three-way ensemble of the paper (§2.2)."""
    cfg.MODEL.RETCLIP = CN()
    # Feature database directory (see retclip/retrieval/database.py); "" disables retrieval.
    cfg.MODEL.RETCLIP.DATABASE = ""
    # Secondary database for test classes missing from the primary one ("" for none).
    cfg.MODEL.RETCLIP.FALLBACK_DATABASE = ""
    # k: neighbours retrieved per segment.
    cfg.MODEL.RETCLIP.TOP_K = 10
    # Per-class aggregation of the neighbours' scores: "max", "mean", "sum" or "rank_vote".
    cfg.MODEL.RETCLIP.AGGREGATION = "max"
    # alpha of rank voting, w = 1 / (RANK_VOTE_OFFSET + rank), rank from 0.
    cfg.MODEL.RETCLIP.RANK_VOTE_OFFSET = 2.0
    # Index backend: "exact" (torch matmul), "flat", "hnsw" or "ivfpq" (FAISS).
    cfg.MODEL.RETCLIP.INDEX = CN()
    cfg.MODEL.RETCLIP.INDEX.TYPE = "exact"
    cfg.MODEL.RETCLIP.INDEX.HNSW_M = 32
    cfg.MODEL.RETCLIP.INDEX.HNSW_EF_SEARCH = 128
    # HNSW build-time candidate list (efConstruction); FAISS's 40 loses recall on clustered data.
    cfg.MODEL.RETCLIP.INDEX.HNSW_EF_CONSTRUCTION = 80
    cfg.MODEL.RETCLIP.INDEX.IVF_NLIST = 1024
    cfg.MODEL.RETCLIP.INDEX.IVF_NPROBE = 8
    cfg.MODEL.RETCLIP.INDEX.PQ_M = 64
    # Candidates re-ranked on float16 rows per requested neighbour (IVF-PQ only; search time:
    # raising it needs no rebuild).
    cfg.MODEL.RETCLIP.INDEX.RERANK_FACTOR = 10
    # IVF-PQ trains its coarse quantiser and PQ on at most this many rows (a seeded sample), so
    # the build streams the database shard by shard (tools/build_index.py).
    cfg.MODEL.RETCLIP.INDEX.TRAIN_SIZE = 100000
    # Seed of that training sample.
    cfg.MODEL.RETCLIP.INDEX.TRAIN_SEED = 0
    # Open a cached index memory-mapped (the re-rank rows stay on disk until searched).
    cfg.MODEL.RETCLIP.INDEX.MMAP = True
    cfg.MODEL.RETCLIP.INDEX.USE_GPU = True
    # Database class names match test classes by synonym, else by CLIP text cosine above this.
    cfg.MODEL.RETCLIP.LABEL_MATCH_THRESHOLD = 0.95
    cfg.MODEL.RETCLIP.LABEL_MATCH_NEAR_MISS = 0.90
    # A database whose embedding recipe (CLIP weights hash, resize, mean/std, padding, dense map,
    # pooling; see retclip/modeling/segment_embedding.py) differs from the model's is refused,
    # naming each differing field. True searches it anyway, with a warning (ablations only).
    cfg.MODEL.RETCLIP.ALLOW_RECIPE_MISMATCH = False


def add_ensemble_config(cfg: CN) -> None:
    """``MODEL.ENSEMBLE``: how FC-CLIP and RetCLIP combine s_iv, s_clip and s_ret (paper §2.2);
    GAMMA also weighs retrieval in the training-free model's "retclip" mode."""
    cfg.MODEL.ENSEMBLE = CN()
    # A name in retclip.ensemble.ENSEMBLE_MODES: "arithmetic" (the paper's weighted sums) or
    # "geometric" (FC-CLIP's; configs/fcclip sets it with ALPHA 0.4, BETA 0.8).
    cfg.MODEL.ENSEMBLE.MODE = "arithmetic"
    # alpha (seen classes) / beta (unseen): weight of the out-of-vocabulary score,
    # s = alpha * s_oov + (1 - alpha) * s_iv (geometric: the exponent of p_out). Paper best 0.4/0.7.
    cfg.MODEL.ENSEMBLE.ALPHA = 0.4
    cfg.MODEL.ENSEMBLE.BETA = 0.7
    # gamma: weight of retrieval, s_oov = gamma * s_ret + (1 - gamma) * s_clip. Paper best 0.3.
    cfg.MODEL.ENSEMBLE.GAMMA = 0.3


def add_sweep_config(cfg: CN) -> None:
    """``TEST.SCORE_CACHE_*``: the per-image score cache that ensemble sweeps read."""
    # Directory for the score cache written during --eval-only ("" = no cache).
    cfg.TEST.SCORE_CACHE_DIR = ""
    # Mask logits storage: "float32" (sweeps exact) or "float16" (half the size, metrics ~1e-3).
    cfg.TEST.SCORE_CACHE_MASK_DTYPE = "float32"
    # A cache shard is written once its images hold this many MB.
    cfg.TEST.SCORE_CACHE_SHARD_MB = 1024.0


def add_training_free_config(cfg: CN) -> None:
    """``MODEL.TRAINING_FREE``: proposals + dense CLIP ViT + retrieval, no training (paper §2.2).

    Retrieval settings (database, k, aggregation, index) are shared with ``MODEL.RETCLIP``, gamma
    with ``MODEL.ENSEMBLE``, panoptic thresholds and output switches with ``MODEL.MASK_FORMER.TEST``.
    """
    tf = cfg.MODEL.TRAINING_FREE = CN()
    # Mask proposals, a name in retclip.proposals.PROPOSAL_REGISTRY: "ground_truth", "sam_grid"
    # (SAM on a point grid) or "grounding_dino_sam".
    tf.PROPOSALS = "grounding_dino_sam"
    # open_clip ViT (the paper's CLIP-ViT-base / -large) and its weights ("" = random).
    tf.CLIP_MODEL_NAME = "ViT-B-16"
    tf.CLIP_PRETRAINED_WEIGHTS = "openai"
    # Dense map: "value" (MaskCLIP value embedding of the last block) or "tokens" (patch tokens).
    tf.DENSE_MODE = "value"
    # Image short side fed to the ViT (each side rounded to the patch size); 0 keeps the input.
    tf.CLIP_SHORT_SIDE = 448
    # Sliding windows over the resized image: square side and step in pixels (0 = one forward).
    tf.SLIDE_WINDOW = 448
    tf.SLIDE_STRIDE = 224
    # A name in retclip.ensemble.TRAINING_FREE_MODES: "clip" (s = s_clip), "retrieval" (s = s_ret)
    # or "retclip" (s = gamma s_ret + (1-gamma) s_clip).
    tf.MODE = "retclip"
    # Multiply a proposal's class score by its own confidence (detector score / SAM IoU).
    tf.SCORE_WITH_PROPOSAL_CONFIDENCE = False
    # Score only the classes the proposal source detected in the image (Grounding DINO's class
    # hints; §2.2 "confidence-based filtering ... to prune absent classes"); others get 0.
    tf.RESTRICT_TO_DETECTED_CLASSES = False
    tf.SAM = sam_config()
    tf.GROUNDING_DINO = grounding_dino_config()


def sam_config() -> CN:
    """A ``SAM`` block (``MODEL.TRAINING_FREE.SAM`` and ``DATABASE_BUILD.SAM``): the fields are
    declared here once; both the model and the database builder build SAM from one through
    :func:`retclip.proposals.build_proposal_source`."""
    sam = CN()
    # Box prompts ("grounding_dino_sam"): "segment_anything" (MODEL_TYPE + CHECKPOINT) or
    # "transformers" (SamModel from HF_MODEL, a hub name or local directory). The point grid
    # ("sam_grid") always uses segment-anything.
    sam.BACKEND = "segment_anything"
    sam.HF_MODEL = "facebook/sam-vit-base"
    # segment-anything type "vit_b" (the paper's) / "vit_l" / "vit_h" ("tiny": test-only) and
    # local checkpoint (.pth state dict, loaded with weights_only=True); "" = random weights.
    sam.MODEL_TYPE = "vit_b"
    sam.CHECKPOINT = ""
    # Ask for 3 masks per box prompt and keep the best by predicted IoU.
    sam.MULTIMASK = False
    # Point-grid generator ("sam_grid"): points per side and segment-anything's filters.
    sam.POINTS_PER_SIDE = 32
    sam.POINTS_PER_BATCH = 64
    sam.PRED_IOU_THRESH = 0.88
    sam.STABILITY_SCORE_THRESH = 0.95
    sam.BOX_NMS_THRESH = 0.7
    return sam


def grounding_dino_config() -> CN:
    """A ``GROUNDING_DINO`` block (``MODEL.TRAINING_FREE`` and ``DATABASE_BUILD``), declared once."""
    gd = CN()
    # Hugging Face hub name or local directory of GroundingDinoForObjectDetection + processor.
    gd.MODEL = "IDEA-Research/grounding-dino-base"
    # Keep boxes whose best class-token probability exceeds BOX_THRESHOLD and TEXT_THRESHOLD
    # (Grounding DINO's two thresholds); per-class box NMS IoU threshold (1.0 disables).
    gd.BOX_THRESHOLD = 0.35
    gd.TEXT_THRESHOLD = 0.25
    gd.NMS_THRESHOLD = 0.8
    # At most this many boxes per image (best scores first).
    gd.MAX_DETECTIONS = 100
    return gd


def add_database_build_config(cfg: CN) -> None:
    """``DATABASE_BUILD``: the keys of ``tools/build_database.py`` (paper §2.1).

    The CLIP encoder is *not* configured here: a database config names the model config it serves
    (``DATABASE_BUILD.MODEL_CONFIG``) and every embedding setting (CLIP and weights, resize,
    mean/std, padding, dense ViT settings) comes from there, so a database and the model that
    searches it share one segment-embedding recipe by construction.
    """
    cfg.DATABASE_BUILD = CN()
    # The model config whose retrieval keys the database serves (relative paths: to the YAML file
    # that sets this key). Its CLIP, resize, mean/std, padding and dense ViT settings make the rows.
    cfg.DATABASE_BUILD.MODEL_CONFIG = ""
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
    # Mask source, a name in retclip.proposals.PROPOSAL_REGISTRY (as MODEL.TRAINING_FREE.PROPOSALS):
    # "grounding_dino_sam" (the paper), "ground_truth" (ablation; needs a panoptic dataset
    # source) or "sam_grid".
    cfg.DATABASE_BUILD.PROPOSALS = "grounding_dino_sam"
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

    cfg.DATABASE_BUILD.GROUNDING_DINO = grounding_dino_config()
    cfg.DATABASE_BUILD.SAM = sam_config()


def _register_renamed_keys(cfg: CN) -> None:
    for old, new in RENAMED_KEYS.items():
        if not cfg.key_is_renamed(old):
            cfg.register_renamed_key(old, new, message=f"set {new} instead")


def add_retclip_config(cfg: CN) -> None:
    """Add every key RetCLIP uses (Mask2Former, FC-CLIP, RetCLIP) to a detectron2 config."""
    _add_released_config_keys(cfg)
    if not hasattr(cfg.MODEL, "MASK_FORMER"):
        add_maskformer2_config(cfg)
    if not hasattr(cfg.MODEL, "FC_CLIP"):
        add_fcclip_config(cfg)
    if not hasattr(cfg.MODEL, "ENSEMBLE"):
        add_ensemble_config(cfg)
    if not hasattr(cfg.MODEL, "RETCLIP"):
        add_retclip_keys(cfg)
    if not hasattr(cfg.MODEL, "TRAINING_FREE"):
        add_training_free_config(cfg)
    if not hasattr(cfg.TEST, "SCORE_CACHE_DIR"):
        add_sweep_config(cfg)
    if not hasattr(cfg, "CPU_THREADS"):
        # torch intra-op threads for CPU-only runs of tools/train_net.py; 0 keeps torch's default.
        # 1 suits tiny models on shared cores (OpenMP spin contention makes more threads slower).
        cfg.CPU_THREADS = 0
    if not hasattr(cfg, "DATABASE_BUILD"):
        add_database_build_config(cfg)
    _register_renamed_keys(cfg)


from .config_file import load_config  # noqa: E402,F401  (the one config reader)
