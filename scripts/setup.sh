#!/usr/bin/env bash
# One command that sets RetCLIP up on a fresh machine: bash scripts/setup.sh
#
# Creates .venv/ in the repository root and installs the pinned dependencies of
# requirements/lock.txt, panopticapi (without its numpy<2 pin), detectron2 and retclip itself.
# Idempotent: when .venv was completed from the same lock file and scripts, a second run only
# checks that everything imports (seconds). Stops at the first failing step and names it; the
# completion stamp is written last, so an interrupted run is never mistaken for a finished one.
#
# Detectron2 comes by one of three routes (see README.md):
#   RETCLIP_DETECTRON2=auto    (default) keep a detectron2 the venv can already import, else
#                              use the pure-Python v0.6 sources of the pb1-detectron2 sdist
#   RETCLIP_DETECTRON2=git     build it from its git repository, the official way for CUDA
#                              clusters (needs network access to GitHub and a compiler/CUDA)
#   RETCLIP_DETECTRON2=source  always use the pb1-detectron2 0.6 pure-Python sources
# Other knobs: RETCLIP_PYTHON (interpreter for the venv, default python3.11 or python3),
# RETCLIP_VENV (default <repo>/.venv), RETCLIP_DETECTRON2_GIT (git URL or git+URL@ref).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RETCLIP_VENV:-$ROOT/.venv}"
LOCK="$ROOT/requirements/lock.txt"
ROUTE="${RETCLIP_DETECTRON2:-auto}"
D2_GIT="${RETCLIP_DETECTRON2_GIT:-git+https://github.com/facebookresearch/detectron2.git}"
D2_SDIST="pb1-detectron2==0.6"
D2_SDIST_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
STAMP="$VENV/.retclip-setup-complete"
CURRENT_STEP="start"
START_TIME=$SECONDS

say() { printf '[setup] %s\n' "$*"; }
fail() {
    printf '[setup] FAILED at step "%s": %s\n' "$CURRENT_STEP" "$*" >&2
    printf '[setup] Nothing was marked complete; fix the cause and run bash scripts/setup.sh again.\n' >&2
    exit 1
}
trap 'fail "command exited with status $? (line $LINENO)"' ERR
step() { CURRENT_STEP="$1"; say "step: $1"; }

case "$ROUTE" in auto|git|source) ;; *) CURRENT_STEP="arguments"; fail "RETCLIP_DETECTRON2=$ROUTE; use auto, git or source" ;; esac

# The stamp records what produced the venv; any change to these inputs triggers a real install.
fingerprint() {
    cat "$LOCK" "$ROOT/setup.py" "$ROOT/scripts/setup.sh" | sha256sum | cut -d' ' -f1
    echo "route=$ROUTE"
}

step "check the Python interpreter"
PY="${RETCLIP_PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
command -v "$PY" >/dev/null 2>&1 || fail "interpreter '$PY' not found (set RETCLIP_PYTHON)"
PYVER="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
"$PY" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] < (3, 14) else 1)' \
    || fail "$PY is Python $PYVER; RetCLIP needs Python 3.10-3.13 (3.11 is tested)"
say "using $PY (Python $PYVER)"

VPY="$VENV/bin/python"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(fingerprint)" ] && [ -x "$VPY" ]; then
    step "verify the existing environment"
    if "$VPY" -c 'import retclip.modeling, detectron2, open_clip, faiss, torch, segment_anything, panopticapi, pycocotools' 2>/dev/null; then
        say "environment at $VENV is complete and up to date; nothing to do ($((SECONDS - START_TIME)) s)"
        exit 0
    fi
    say "the environment is stamped complete but an import fails; reinstalling"
    rm -f "$STAMP"
fi
rm -f "$STAMP"

step "create the virtual environment"
if [ ! -x "$VPY" ]; then
    "$PY" -m venv "$VENV" || fail "could not create $VENV (is the venv module installed?)"
    say "created $VENV"
else
    say "reusing $VENV"
fi
PIP=("$VPY" -m pip --disable-pip-version-check)

step "install pinned dependencies (requirements/lock.txt)"
# pip 25+ refuses to download the pb1-detectron2 sdist (its metadata names a URL dependency).
"${PIP[@]}" install "pip==24.3.1" "setuptools>=69" wheel \
    || fail "pip could not reach a package index (network or index configuration)"
"${PIP[@]}" install -r "$LOCK" || fail "pip could not install requirements/lock.txt"

step "install panopticapi without its numpy<2 pin"
"${PIP[@]}" install --no-deps "panopticapi-lite==0.2.0" || fail "pip could not install panopticapi-lite"

step "provide detectron2 (route: $ROUTE)"
SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PTH="$SITE/retclip-detectron2-source.pth"
have_d2() { "$VPY" -c 'import detectron2' >/dev/null 2>&1; }
if [ "$ROUTE" = "git" ]; then
    rm -f "$PTH"
    "${PIP[@]}" install --no-build-isolation "$D2_GIT" \
        || fail "building detectron2 from $D2_GIT failed (network to GitHub, a C++ compiler and CUDA_HOME are needed)"
    say "detectron2 built from $D2_GIT"
elif [ "$ROUTE" = "auto" ] && have_d2 && [ ! -f "$PTH" ]; then
    say "keeping the detectron2 already importable: $("$VPY" -c 'import detectron2; print(detectron2.__file__)')"
else
    SRC="$VENV/src"
    D2_DIR="$SRC/pb1-detectron2-0.6"
    if [ ! -f "$D2_DIR/detectron2/__init__.py" ]; then
        mkdir -p "$SRC"
        TMP="$(mktemp -d "$SRC/.download.XXXXXX")"
        # The sdist's setup.py imports torch to produce metadata, hence no build isolation.
        "${PIP[@]}" download --no-deps --no-binary :all: --no-build-isolation "$D2_SDIST" -d "$TMP" \
            || fail "pip could not download the $D2_SDIST sdist"
        echo "$D2_SDIST_SHA256  $TMP/pb1-detectron2-0.6.tar.gz" | sha256sum -c --quiet - \
            || fail "the downloaded $D2_SDIST sdist does not have the expected sha256"
        tar xzf "$TMP"/pb1-detectron2-0.6.tar.gz -C "$TMP" || fail "could not unpack the $D2_SDIST sdist"
        rm -rf "$D2_DIR"
        mv "$TMP/pb1-detectron2-0.6" "$D2_DIR"
        rm -rf "$TMP"
    fi
    echo "$D2_DIR" > "$PTH"
    say "detectron2 v0.6 pure-Python sources on the path via $(basename "$PTH")"
fi

step "install retclip (editable)"
"${PIP[@]}" install --no-deps --no-build-isolation --use-pep517 -e "$ROOT" || fail "pip install -e . failed"

step "check that everything imports"
"$VPY" - <<'PYCHECK' || fail "an import failed (see the traceback above)"
import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import retclip.modeling  # applies the compatibility steps, then registers with detectron2
import detectron2, open_clip, faiss, torch, segment_anything, transformers, panopticapi, pycocotools
from detectron2.modeling import META_ARCH_REGISTRY
print(f"[setup] torch {torch.__version__}, detectron2 {detectron2.__version__} ({os.path.dirname(detectron2.__file__)}), "
      f"open_clip {open_clip.__version__}, faiss {faiss.__version__}, transformers {transformers.__version__}")
PYCHECK

fingerprint > "$STAMP"
say "done in $((SECONDS - START_TIME)) s. Run the tests with: .venv/bin/python -m pytest"
