#!/usr/bin/env bash
# Reproduce Table 1 of the RetCLIP paper: open-vocabulary panoptic segmentation on ADE20k-150 val
# after fine-tuning on COCO panoptic; FC-CLIP and RetCLIP (Open Images / ADE20k database) for
# CLIP-RN50x64 and CLIP-ConvNeXt-large. Each row is one
#   tools/train_net.py --eval-only --config-file configs/retclip/<row>.yaml MODEL.WEIGHTS ... \
#       MODEL.RETCLIP.DATABASE ...
# run into OUTPUT_ROOT/<row>/ (metrics_eval.json); at the end the table in the paper's layout is
# printed and the metrics are checked against configs/expected/table1.json (exit status 1 when a
# metric is outside its tolerance). See docs/REPRODUCING.md.
#
# Inputs (environment variables):
#   DETECTRON2_DATASETS      dataset root holding ADEChallengeData2016/ prepared by
#                            datasets/prepare_ade20k_{pan,sem,ins}_seg.py (required)
#   FCCLIP_CONVNEXT_WEIGHTS  FC-CLIP ConvNeXt-L COCO checkpoint, fcclip_cocopan.pth (ConvNeXt rows)
#   FCCLIP_R50X64_WEIGHTS    FC-CLIP RN50x64 COCO checkpoint (RN50x64 rows)
#   RETCLIP_DATABASES        folder with the feature databases ade20k_train_convnext_large_d_320/,
#                            openimages_convnext_large_d_320/, ade20k_train_RN50x64/,
#                            openimages_RN50x64/ (built with tools/build_database.py; RetCLIP rows)
#   ROWS                     space-separated subset of the row names below (default: all six)
#   NUM_GPUS                 GPUs per run (default 1; 0 runs on CPU, very slowly)
#   OUTPUT_ROOT              default output/table1
#   PYTHON                   interpreter (default: the repository's .venv, else python3)
#   EXTRA_OPTS               extra KEY VALUE config overrides appended to every run
# Usage: scripts/reproduce_table1.sh [--check]   (--check validates the inputs and exits)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=lib/reproduce_common.sh
source "$REPO/scripts/lib/reproduce_common.sh"

# name|weights variable|primary database|fallback database ("-" = none)
T1_ROWS=(
  "fcclip_r50x64_ade20k|FCCLIP_R50X64_WEIGHTS|-|-"
  "retclip_r50x64_openimages|FCCLIP_R50X64_WEIGHTS|openimages_RN50x64|-"
  "retclip_r50x64_ade20k|FCCLIP_R50X64_WEIGHTS|ade20k_train_RN50x64|openimages_RN50x64"
  "fcclip_convnext_large_ade20k|FCCLIP_CONVNEXT_WEIGHTS|-|-"
  "retclip_convnext_large_openimages|FCCLIP_CONVNEXT_WEIGHTS|openimages_convnext_large_d_320|-"
  "retclip_convnext_large_ade20k|FCCLIP_CONVNEXT_WEIGHTS|ade20k_train_convnext_large_d_320|openimages_convnext_large_d_320"
)

t1_selected() {
  local entry name
  for entry in "${T1_ROWS[@]}"; do
    name="${entry%%|*}"
    if [[ -z "${ROWS:-}" || " ${ROWS} " == *" ${name} "* ]]; then
      echo "$entry"
    fi
  done
}

t1_check() {
  repro_check_ade_val
  local entry name wvar db fb selected=0
  if [[ -n "${ROWS:-}" ]]; then
    for name in $ROWS; do
      printf '%s\n' "${T1_ROWS[@]}" | grep -q "^${name}|" || repro_fail "ROWS: unknown row '$name' (rows: $(printf '%s ' "${T1_ROWS[@]%%|*}"))"
    done
  fi
  while IFS="|" read -r name wvar db fb; do
    selected=1
    [[ -n "${!wvar:-}" ]] || repro_fail "$wvar is not set (FC-CLIP checkpoint for row $name)"
    [[ -f "${!wvar}" ]] || repro_fail "$wvar: file not found at '${!wvar}'"
    [[ -f "$REPO/configs/retclip/$name.yaml" ]] || repro_fail "config configs/retclip/$name.yaml not found"
    [[ "$db" == "-" ]] || repro_check_database "$db"
    [[ "$fb" == "-" ]] || repro_check_database "$fb"
  done < <(t1_selected)
  ((selected)) || repro_fail "ROWS selects no row"
}

t1_run_row() {
  local name="$1" weights="$2" db="$3" fb="$4" out="$5"
  mkdir -p "$out"
  [[ "$db" == "-" ]] && db=""
  [[ "$fb" == "-" ]] && fb=""
  local db_opts=()
  if [[ "$name" == retclip_* ]]; then
    db_opts=(MODEL.RETCLIP.DATABASE "$db" MODEL.RETCLIP.FALLBACK_DATABASE "$fb")
  fi
  # shellcheck disable=SC2086  # EXTRA_OPTS is a list of KEY VALUE words
  "$(repro_python)" "$REPO/tools/train_net.py" --eval-only --num-gpus "${NUM_GPUS:-1}" \
    --config-file "$REPO/configs/retclip/$name.yaml" \
    OUTPUT_DIR "$out" MODEL.WEIGHTS "$weights" "${db_opts[@]}" \
    ${EXTRA_OPTS:-} 2>&1 | tee "$out/log.txt"
}

table1_main() {
  local check_only=0
  [[ "${1:-}" == "--check" ]] && check_only=1
  t1_check
  if ((check_only)); then
    echo "inputs found; ready to run Table 1 ($(t1_selected | cut -d'|' -f1 | tr '\n' ' '))"
    return 0
  fi
  local root="${OUTPUT_ROOT:-$REPO/output/table1}" name wvar db fb
  while IFS="|" read -r name wvar db fb; do
    echo "=== Table 1: $name -> $root/$name"
    t1_run_row "$name" "${!wvar}" "$db" "$fb" "$root/$name"
  done < <(t1_selected)
  "$(repro_python)" "$REPO/tools/make_report.py" table --expected "$REPO/configs/expected/table1.json" \
    --results "$root" --out "$root/table1.md"
  "$(repro_python)" -m retclip.sweep.expected "$REPO/configs/expected/table1.json" "$root"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  cd "$REPO"
  table1_main "$@"
fi
