#!/usr/bin/env bash
# Reproduce Table 4 of the RetCLIP paper: PQ on ADE20k-150 val of RetCLIP (CLIP-ConvNeXt-large,
# ADE20k database with the Open Images fallback, arithmetic ensemble) at the paper's 14
# (alpha, beta, gamma) points (configs/sweep/table4.yaml).
#
# Step 1 runs the network once over ADE20k val and writes the score cache (and the metrics of the
# config's own point, 0.4 / 0.7 / 0.3, into OUTPUT_ROOT/eval/metrics_eval.json):
#   python tools/train_net.py --eval-only --config-file configs/retclip/retclip_convnext_large_ade20k.yaml \
#       MODEL.WEIGHTS ... TEST.SCORE_CACHE_DIR ...
# Step 2 sweeps the grid on the cache without the network (tools/sweep_ensemble.py), step 3
# writes the table (paper's layout, paper's PQ beside ours) and PQ heatmaps, and checks the
# results against configs/expected/table4.json (exit status 1 when outside tolerance).
# Re-running skips a complete cache and the grid points already swept.
#
# Inputs (environment variables):
#   DETECTRON2_DATASETS      dataset root holding the prepared ADEChallengeData2016/ (required)
#   FCCLIP_CONVNEXT_WEIGHTS  FC-CLIP ConvNeXt-L COCO checkpoint, fcclip_cocopan.pth (required)
#   RETCLIP_DATABASES        folder with ade20k_train_convnext_large_d_320/ and
#                            openimages_convnext_large_d_320/ (required)
#   SCORE_CACHE_DIR          where the cache goes (default OUTPUT_ROOT/cache). Size: about
#                            54 MB per image in float32 at 800 x 1088 padded and 250 queries
#                            (decoder-resolution masks), ~110 GB for the 2000 val images;
#                            CACHE_DTYPE=float16 halves it (PQ to ~1e-3).
#   CACHE_DTYPE              float32 (default, sweep == full evaluation exactly) or float16
#   GRID                     grid file (default configs/sweep/table4.yaml;
#                            configs/sweep/table4_dense.yaml for full heatmaps)
#   SWEEP_WORKERS            parallel sweep processes (default 4)
#   METRICS_BACKEND          hotcoco (default) or reference
#   NUM_GPUS                 GPUs for step 1 (default 1; 0 runs on CPU, very slowly)
#   OUTPUT_ROOT              default output/table4
#   PYTHON, EXTRA_OPTS       as in scripts/reproduce_table1.sh
# Usage: scripts/reproduce_table4.sh [--check]   (--check validates the inputs and exits)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/reproduce_common.sh
source "$REPO/scripts/lib/reproduce_common.sh"
CONFIG="configs/retclip/retclip_convnext_large_ade20k.yaml"

t4_check() {
  repro_check_ade_val
  [[ -n "${FCCLIP_CONVNEXT_WEIGHTS:-}" ]] || repro_fail "FCCLIP_CONVNEXT_WEIGHTS is not set (FC-CLIP ConvNeXt-L checkpoint, fcclip_cocopan.pth)"
  [[ -f "$FCCLIP_CONVNEXT_WEIGHTS" ]] || repro_fail "FCCLIP_CONVNEXT_WEIGHTS: file not found at '$FCCLIP_CONVNEXT_WEIGHTS'"
  repro_check_database ade20k_train_convnext_large_d_320
  repro_check_database openimages_convnext_large_d_320
  [[ -f "${GRID:-$REPO/configs/sweep/table4.yaml}" ]] || repro_fail "GRID: grid file not found at '${GRID}'"
  case "${CACHE_DTYPE:-float32}" in float32 | float16) ;; *) repro_fail "CACHE_DTYPE must be float32 or float16, got '$CACHE_DTYPE'" ;; esac
}

table4_main() {
  local check_only=0
  [[ "${1:-}" == "--check" ]] && check_only=1
  t4_check
  if ((check_only)); then
    echo "inputs found; ready to run Table 4"
    return 0
  fi
  local root="${OUTPUT_ROOT:-$REPO/output/table4}"
  local cache_root="${SCORE_CACHE_DIR:-$root/cache}"
  local cache="$cache_root/openvocab_ade20k_panoptic_val"
  mkdir -p "$root/eval"
  if [[ -f "$cache/manifest.json" ]] && grep -q '"complete": true' "$cache/manifest.json"; then
    echo "=== Table 4, step 1: score cache $cache is complete; skipping the network"
  else
    echo "=== Table 4, step 1: evaluation with the score cache -> $cache"
    # shellcheck disable=SC2086  # EXTRA_OPTS is a list of KEY VALUE words
    "$(repro_python)" "$REPO/tools/train_net.py" --eval-only --num-gpus "${NUM_GPUS:-1}" --config-file "$REPO/$CONFIG" \
      OUTPUT_DIR "$root/eval" MODEL.WEIGHTS "$FCCLIP_CONVNEXT_WEIGHTS" \
      TEST.SCORE_CACHE_DIR "$cache_root" TEST.SCORE_CACHE_MASK_DTYPE "${CACHE_DTYPE:-float32}" \
      ${EXTRA_OPTS:-} 2>&1 | tee "$root/eval/log.txt"
  fi
  echo "=== Table 4, step 2: sweep ${GRID:-configs/sweep/table4.yaml}"
  "$(repro_python)" "$REPO/tools/sweep_ensemble.py" --cache "$cache" --output-dir "$root/sweep" \
    --grid "${GRID:-$REPO/configs/sweep/table4.yaml}" --mode arithmetic \
    --metrics-backend "${METRICS_BACKEND:-hotcoco}" --workers "${SWEEP_WORKERS:-4}" \
    --config-file "$REPO/$CONFIG" MODEL.RETCLIP.DATABASE "ade20k_train_convnext_large_d_320"
  echo "=== Table 4, step 3: report and check"
  "$(repro_python)" "$REPO/tools/make_report.py" sweep --sweep "$root/sweep" --mode arithmetic \
    --expected "$REPO/configs/expected/table4.json" --out-dir "$root/report"
  "$(repro_python)" -m retclip.sweep.expected "$REPO/configs/expected/table4.json" "$root/sweep"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  cd "$REPO"
  table4_main "$@"
fi
