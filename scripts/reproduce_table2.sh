#!/usr/bin/env bash
# Reproduce Table 2 of the RetCLIP paper: training-free open-vocabulary panoptic segmentation on
# ADE20k-150 val with Grounding DINO + SAM proposals; CLIP / Retrieval / RetCLIP rows for
# CLIP-ViT-base (ViT-B-16) and CLIP-ViT-large (ViT-L-14). Each row is one
#   tools/train_net.py --eval-only --config-file configs/training_free/<row>.yaml
# run; a table of PQ / mAP / mIoU (fractions, as in the paper) is printed at the end.
#
# Inputs (environment variables):
#   DETECTRON2_DATASETS   dataset root holding ADEChallengeData2016/ prepared by
#                         datasets/prepare_ade20k_{pan,sem,ins}_seg.py (required)
#   RETCLIP_DATABASES     folder holding the feature databases ade20k_train_vit_b16/ and
#                         ade20k_train_vit_l14/ (built with the same dense ViT: fingerprint
#                         "ViT-B-16+dense-value/openai", ...) (required)
#   SAM_CHECKPOINT        SAM ViT-B checkpoint sam_vit_b_01ec64.pth (required)
#   GROUNDING_DINO_MODEL  local folder or hub name of Grounding DINO base
#                         (default IDEA-Research/grounding-dino-base; a hub name needs internet)
#   CLIP_VIT_B16_WEIGHTS, CLIP_VIT_L14_WEIGHTS
#                         open_clip tag or local weights file (default "openai")
#   NUM_GPUS              GPUs per run (default 1; 0 runs on CPU, very slowly)
#   OUTPUT_ROOT           where each row writes OUTPUT_DIR/metrics_eval.json (default output/table2)
#   PYTHON                interpreter (default: the repository's .venv, else python3)
#   EXTRA_OPTS            extra KEY VALUE config overrides appended to every run
# Usage: scripts/reproduce_table2.sh [--check]   (--check validates the inputs and exits)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/reproduce_common.sh
source "$REPO/scripts/lib/reproduce_common.sh"

# tf_check_common: the dataset, SAM and Grounding DINO inputs every training-free row needs.
tf_check_common() {
  repro_check_ade_val
  [[ -n "${SAM_CHECKPOINT:-}" ]] || repro_fail "SAM_CHECKPOINT is not set (path to sam_vit_b_01ec64.pth)"
  [[ -f "$SAM_CHECKPOINT" ]] || repro_fail "SAM_CHECKPOINT: file not found at '$SAM_CHECKPOINT'"
  GROUNDING_DINO_MODEL="${GROUNDING_DINO_MODEL:-IDEA-Research/grounding-dino-base}"
  case "$GROUNDING_DINO_MODEL" in
    /* | ./* | ../* | "~"*) repro_require_dir GROUNDING_DINO_MODEL "${GROUNDING_DINO_MODEL/#\~/$HOME}" "Grounding DINO folder" ;;
  esac
}

# tf_clip_weights CONFIG: the CLIP weights override for a config's ViT.
tf_clip_weights() {
  case "$1" in
    *vit_b16*) echo "${CLIP_VIT_B16_WEIGHTS:-openai}" ;;
    *vit_l14*) echo "${CLIP_VIT_L14_WEIGHTS:-openai}" ;;
  esac
}

# tf_run_row CONFIG OUTPUT_DIR: one --eval-only run.
tf_run_row() {
  local config="$1" out="$2" weights
  weights="$(tf_clip_weights "$config")"
  case "$weights" in
    /* | ./* | ../*) [[ -f "$weights" ]] || repro_fail "CLIP weights file not found at '$weights'" ;;
  esac
  mkdir -p "$out"
  # shellcheck disable=SC2086  # EXTRA_OPTS is a list of KEY VALUE words
  "$(repro_python)" "$REPO/tools/train_net.py" --eval-only --num-gpus "${NUM_GPUS:-1}" \
    --config-file "$REPO/configs/training_free/$config" \
    OUTPUT_DIR "$out" \
    MODEL.TRAINING_FREE.CLIP_PRETRAINED_WEIGHTS "$weights" \
    MODEL.TRAINING_FREE.SAM.CHECKPOINT "$SAM_CHECKPOINT" \
    MODEL.TRAINING_FREE.GROUNDING_DINO.MODEL "$GROUNDING_DINO_MODEL" \
    ${EXTRA_OPTS:-} 2>&1 | tee "$out/log.txt"
}

# tf_table TITLE ROW...: ROW is "label|backbone|output dir|paper PQ|paper mAP|paper mIoU".
tf_table() {
  local title="$1"
  shift
  "$(repro_python)" - "$title" "$@" <<'PY'
import json, math, os, sys

def metric(results, task, key):
    if task not in results:  # results of several datasets: take the first that has the task
        results = next((r for r in results.values() if isinstance(r, dict) and task in r), {})
    value = results.get(task, {}).get(key)
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value / 100:.3f}"

title, rows = sys.argv[1], sys.argv[2:]
print(f"\n{title}\n{'Row':<26}{'Backbone':<18}{'PQ':>7}{'mAP':>7}{'mIoU':>7}   paper PQ / mAP / mIoU")
for row in rows:
    label, backbone, out, *paper = row.split("|")
    path = os.path.join(out, "metrics_eval.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    got = [metric(results, t, k) for t, k in (("panoptic_seg", "PQ"), ("segm", "AP"), ("sem_seg", "mIoU"))]
    print(f"{label:<26}{backbone:<18}{got[0]:>7}{got[1]:>7}{got[2]:>7}   {' / '.join(paper)}")
PY
}

# tf_reproduce NUMBER TITLE [--check] -- SPEC...: check the inputs, run one --eval-only per row,
# print the table. SPEC entries are label|backbone|config|paper PQ|mAP|mIoU.
tf_reproduce() {
  local number="$1" title="$2" check_only=0
  shift 2
  [[ "${1:-}" == "--check" ]] && check_only=1 && shift
  [[ "${1:-}" == "--" ]] && shift
  tf_check_common
  repro_check_database ade20k_train_vit_b16
  repro_check_database ade20k_train_vit_l14
  if ((check_only)); then
    echo "inputs found; ready to run Table $number"
    return 0
  fi
  local root="${OUTPUT_ROOT:-$REPO/output/table$number}" rows=() entry label backbone config out p1 p2 p3
  for entry in "$@"; do
    IFS="|" read -r label backbone config p1 p2 p3 <<<"$entry"
    out="$root/${config%.yaml}"
    echo "=== Table $number: $label, $backbone ($config) -> $out"
    tf_run_row "$config" "$out"
    rows+=("$label|$backbone|$out|$p1|$p2|$p3")
  done
  tf_table "$title" "${rows[@]}"
}

table2_main() {
  local check=()
  [[ "${1:-}" == "--check" ]] && check=(--check)
  # label|backbone|config|paper PQ|mAP|mIoU (Table 2)
  tf_reproduce 2 "Table 2 (ADE20k-150 val, training free, Grounding DINO + SAM proposals)" "${check[@]}" -- \
    "CLIP|CLIP-ViT-base|tf_clip_vit_b16_gdino_sam.yaml|0.090|0.055|0.123" \
    "Retrieval|CLIP-ViT-base|tf_retrieval_vit_b16_gdino_sam.yaml|0.117|0.071|0.150" \
    "RetCLIP|CLIP-ViT-base|tf_retclip_vit_b16_gdino_sam.yaml|0.127|0.075|0.173" \
    "CLIP|CLIP-ViT-large|tf_clip_vit_l14_gdino_sam.yaml|0.109|0.069|0.138" \
    "Retrieval|CLIP-ViT-large|tf_retrieval_vit_l14_gdino_sam.yaml|0.158|0.098|0.215" \
    "RetCLIP|CLIP-ViT-large|tf_retclip_vit_l14_gdino_sam.yaml|0.161|0.103|0.222"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  table2_main "$@"
fi
