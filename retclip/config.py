"""Every config key RetCLIP adds to detectron2's, with its default and what it means.

``add_retclip_config(cfg)`` is the only place keys are born. It covers the keys of Mask2Former and
FC-CLIP (same names and defaults, so their YAMLs load here with only ``_BASE_`` paths changed),
and RetCLIP's own ``MODEL.RETCLIP`` and ``MODEL.TRAINING_FREE`` blocks. Paper symbols are named in
the comments (alpha, beta, gamma, k).
"""
from detectron2.config import CfgNode as CN


def _add_deeplab_keys(cfg: CN) -> None:
    """Mask2Former-style base YAMLs set a few DeepLab keys (added by ``add_deeplab_config``)."""
    from detectron2.projects.deeplab import add_deeplab_config

    if not hasattr(cfg.MODEL.RESNETS, "RES5_MULTI_GRID"):
        add_deeplab_config(cfg)


def add_maskformer2_config(cfg: CN) -> None:
    """Keys of Mask2Former that FC-CLIP configs use, with Mask2Former's defaults."""
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
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
    # Set by Mask2Former/FC-CLIP base YAMLs (0); accepted so they load, read by nothing.
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
    """``MODEL.FC_CLIP``: the frozen CLIP backbone and FC-CLIP's geometric ensemble."""
    cfg.MODEL.FC_CLIP = CN()
    # open_clip architecture name and weights: a pretrained tag, a local file, or "" (random).
    cfg.MODEL.FC_CLIP.CLIP_MODEL_NAME = "convnext_large_d_320"
    cfg.MODEL.FC_CLIP.CLIP_PRETRAINED_WEIGHTS = "laion2b_s29b_b131k_ft_soup"
    cfg.MODEL.FC_CLIP.EMBED_DIM = 768
    # Geometric ensemble exponents for seen (alpha) and unseen (beta) classes.
    cfg.MODEL.FC_CLIP.GEOMETRIC_ENSEMBLE_ALPHA = 0.4
    cfg.MODEL.FC_CLIP.GEOMETRIC_ENSEMBLE_BETA = 0.8
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
    # "arithmetic" (the paper's formula) or "geometric" (FC-CLIP's).
    cfg.MODEL.RETCLIP.ENSEMBLE_MODE = "arithmetic"
    # s = alpha * s_oov + (1 - alpha) * s_iv for seen classes, beta for unseen ones;
    # s_oov = gamma * s_ret + (1 - gamma) * s_clip. Paper best: 0.4 / 0.7 / 0.3.
    cfg.MODEL.RETCLIP.ALPHA = 0.4
    cfg.MODEL.RETCLIP.BETA = 0.7
    cfg.MODEL.RETCLIP.GAMMA = 0.3


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

    Retrieval settings (database, k, aggregation, index, gamma) are shared with ``MODEL.RETCLIP``;
    panoptic thresholds and output switches with ``MODEL.MASK_FORMER.TEST``.
    """
    tf = cfg.MODEL.TRAINING_FREE = CN()
    # Mask proposals: "ground_truth", "sam_grid" (SAM on a point grid) or "grounding_dino_sam".
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
    # "clip" (s = s_clip), "retrieval" (s = s_ret) or "retclip" (s = gamma s_ret + (1-gamma) s_clip).
    tf.MODE = "retclip"
    # Multiply a proposal's class score by its own confidence (detector score / SAM IoU).
    tf.SCORE_WITH_PROPOSAL_CONFIDENCE = False
    # Score only the classes the proposal source detected in the image (Grounding DINO's class
    # hints; §2.2 "confidence-based filtering ... to prune absent classes"); others get 0.
    tf.RESTRICT_TO_DETECTED_CLASSES = False
    tf.SAM = CN()
    # Box prompts ("grounding_dino_sam"): "segment_anything" (MODEL_TYPE + CHECKPOINT) or
    # "transformers" (SamModel from HF_MODEL, a hub name or local directory). The point grid
    # ("sam_grid") always uses segment-anything.
    tf.SAM.BACKEND = "segment_anything"
    tf.SAM.HF_MODEL = "facebook/sam-vit-base"
    # segment-anything type "vit_b" / "vit_l" / "vit_h" ("tiny": test-only) and local checkpoint.
    tf.SAM.MODEL_TYPE = "vit_b"
    tf.SAM.CHECKPOINT = ""
    # Keep the best of SAM's 3 masks per box prompt (by predicted IoU).
    tf.SAM.MULTIMASK = False
    # Point-grid generator ("sam_grid"): points per side and segment-anything's filters.
    tf.SAM.POINTS_PER_SIDE = 32
    tf.SAM.POINTS_PER_BATCH = 64
    tf.SAM.PRED_IOU_THRESH = 0.88
    tf.SAM.STABILITY_SCORE_THRESH = 0.95
    tf.SAM.BOX_NMS_THRESH = 0.7
    tf.GROUNDING_DINO = CN()
    # Hugging Face hub name or local directory of GroundingDinoForObjectDetection + processor.
    tf.GROUNDING_DINO.MODEL = "IDEA-Research/grounding-dino-base"
    # Keep boxes above both thresholds; per-class box NMS IoU (1.0 disables).
    tf.GROUNDING_DINO.BOX_THRESHOLD = 0.35
    tf.GROUNDING_DINO.TEXT_THRESHOLD = 0.25
    tf.GROUNDING_DINO.NMS_THRESHOLD = 0.8


def add_retclip_config(cfg: CN) -> None:
    """Add every key RetCLIP uses (Mask2Former, FC-CLIP, RetCLIP) to a detectron2 config."""
    _add_deeplab_keys(cfg)
    if not hasattr(cfg.MODEL, "MASK_FORMER"):
        add_maskformer2_config(cfg)
    if not hasattr(cfg.MODEL, "FC_CLIP"):
        add_fcclip_config(cfg)
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
    from retclip.database_builder.config import add_database_build_config  # DATABASE_BUILD block

    add_database_build_config(cfg)
