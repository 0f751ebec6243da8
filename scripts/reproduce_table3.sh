#!/usr/bin/env bash
# Reproduce Table 3 of the RetCLIP paper: RetCLIP training free on ADE20k-150 val with the ADE20k
# feature database, for three mask proposal sources (ground truth, SAM on a point grid,
# Grounding DINO + SAM) and two CLIP ViTs. Each row is one
#   tools/train_net.py --eval-only --config-file configs/training_free/<row>.yaml
# run; a table of PQ / mAP / mIoU (fractions, as in the paper) is printed at the end. The
# "Grounding DINO + SAM" rows are the RetCLIP rows of Table 2 (same configs).
#
# Inputs: the environment variables of scripts/reproduce_table2.sh (DETECTRON2_DATASETS,
# RETCLIP_DATABASES, SAM_CHECKPOINT, GROUNDING_DINO_MODEL, CLIP_VIT_{B16,L14}_WEIGHTS, NUM_GPUS,
# PYTHON, EXTRA_OPTS); OUTPUT_ROOT defaults to output/table3.
# Usage: scripts/reproduce_table3.sh [--check]   (--check validates the inputs and exits)
set -euo pipefail

# shellcheck source=reproduce_table2.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/reproduce_table2.sh"

table3_main() {
  local check=()
  [[ "${1:-}" == "--check" ]] && check=(--check)
  # label|backbone|config|paper PQ|mAP|mIoU (Table 3)
  tf_reproduce 3 "Table 3 (ADE20k-150 val, RetCLIP training free, ADE20k feature database)" "${check[@]}" -- \
    "Ground Truth|CLIP-ViT-base|tf_retclip_vit_b16_gt.yaml|0.211|0.133|0.276" \
    "Grid Sampling + SAM|CLIP-ViT-base|tf_retclip_vit_b16_sam_grid.yaml|0.052|0.034|0.069" \
    "Grounding DINO + SAM|CLIP-ViT-base|tf_retclip_vit_b16_gdino_sam.yaml|0.127|0.075|0.173" \
    "Ground Truth|CLIP-ViT-large|tf_retclip_vit_l14_gt.yaml|0.284|0.173|0.394" \
    "Grid Sampling + SAM|CLIP-ViT-large|tf_retclip_vit_l14_sam_grid.yaml|0.078|0.042|0.112" \
    "Grounding DINO + SAM|CLIP-ViT-large|tf_retclip_vit_l14_gdino_sam.yaml|0.161|0.103|0.222"
}

table3_main "$@"
