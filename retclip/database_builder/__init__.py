"""Feature database construction (paper §2.1): sources with image-level labels, Grounding DINO
-> SAM masks, the model's CLIP dense map and mask pooling, sharded resumable distributed writes."""
from retclip import compat as _compat

_compat.apply_all()  # before detectron2 is first imported

from retclip import data as _data  # noqa: E402,F401  (registers the datasets a DatasetSource reads)

from retclip.modeling.segment_embedding import (
    ConvSegmentEmbedding,
    SegmentEmbedding,
    ViTSegmentEmbedding,
    masks_to_logits,
)

from .builder import DatabaseBuilder
from retclip.config import add_database_build_config
from .counting import ForwardCounter
from .distributed import launch_build, rank_and_world_size
from .factory import (
    build_database_builder,
    build_encoder,
    build_proposals,
    run_build,
    setup_build_config,
    watch_models,
)
from .parts import finalize_parts, part_dir
from .report import image_paths, read_chunk_records, write_build_report
from .sources import (
    DatasetSource,
    FolderSource,
    ImageRecord,
    ImageSource,
    OpenImagesSource,
    build_source,
)
from .webdataset_source import WebDatasetSource

__all__ = [
    "DatabaseBuilder",
    "add_database_build_config",
    "ForwardCounter",
    "launch_build",
    "rank_and_world_size",
    "ConvSegmentEmbedding",
    "SegmentEmbedding",
    "ViTSegmentEmbedding",
    "masks_to_logits",
    "build_database_builder",
    "build_encoder",
    "build_proposals",
    "run_build",
    "setup_build_config",
    "watch_models",
    "image_paths",
    "read_chunk_records",
    "write_build_report",
    "DatasetSource",
    "FolderSource",
    "ImageRecord",
    "ImageSource",
    "OpenImagesSource",
    "build_source",
    "finalize_parts",
    "part_dir",
    "WebDatasetSource",
]
