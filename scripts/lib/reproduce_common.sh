# Shared helpers of scripts/reproduce_table{1,2,3,4}.sh: input checks that name what is missing,
# and the interpreter choice. Sourced, never run; expects REPO to be set by the caller.

# repro_fail MESSAGE: print an error and stop with status 2 (bad or missing input).
repro_fail() {
  echo "error: $*" >&2
  exit 2
}

# repro_python: $PYTHON, else the repository's .venv, else python3.
repro_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    echo "$PYTHON"
  elif [[ -x "$REPO/.venv/bin/python" ]]; then
    echo "$REPO/.venv/bin/python"
  else
    echo python3
  fi
}

# repro_require_dir NAME PATH WHAT: refuse unless PATH is a directory.
repro_require_dir() {
  [[ -d "$2" ]] || repro_fail "$1: $3 not found at '$2'"
}

# repro_check_ade_val: DETECTRON2_DATASETS holds the prepared ADE20k-150 val split.
repro_check_ade_val() {
  [[ -n "${DETECTRON2_DATASETS:-}" ]] || repro_fail "DETECTRON2_DATASETS is not set (dataset root with ADEChallengeData2016/)"
  local ade="${DETECTRON2_DATASETS/#\~/$HOME}/ADEChallengeData2016"
  repro_require_dir DETECTRON2_DATASETS "$ade" "ADE20k folder"
  repro_require_dir DETECTRON2_DATASETS "$ade/images/validation" "ADE20k val images"
  repro_require_dir DETECTRON2_DATASETS "$ade/ade20k_panoptic_val" "ADE20k panoptic PNGs (run datasets/prepare_ade20k_pan_seg.py)"
  [[ -f "$ade/ade20k_panoptic_val.json" ]] || repro_fail "DETECTRON2_DATASETS: $ade/ade20k_panoptic_val.json not found (run datasets/prepare_ade20k_pan_seg.py)"
}

# repro_check_database NAME: refuse unless $RETCLIP_DATABASES/NAME holds a database manifest.
repro_check_database() {
  [[ -n "${RETCLIP_DATABASES:-}" ]] || repro_fail "RETCLIP_DATABASES is not set (folder holding the feature databases)"
  local db="${RETCLIP_DATABASES/#\~/$HOME}/$1"
  [[ -f "$db/manifest.json" ]] || repro_fail "RETCLIP_DATABASES: no feature database at '$db' (missing manifest.json; build it with tools/build_database.py)"
}
