#!/usr/bin/env bash
# See the demos work in a few minutes on a laptop CPU, with nothing downloaded: scikit-image's
# public-domain photos (astronaut, coffee, chelsea), a feature database built from them by the
# real builder with the tiny random-weight Grounding DINO, SAM and CLIP, then
#   1. tools/demo.py     -> OUT/demo/<photo>_panoptic.png (legend) and <photo>_segments.json
#   2. tools/inspect_database.py thumbnails -> OUT/thumbnails_cat.png
#   3. tools/web_demo.py -> started on 127.0.0.1, fetched once, stopped (KEEP_WEB=1: left running)
# Labels are meaningless (random weights); the point is to see every part run.
#
#   bash scripts/try_demo.sh [OUT]        (default OUT: ${TMPDIR:-/tmp}/retclip_try_demo)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="${1:-${TMPDIR:-/tmp}/retclip_try_demo}"
PORT="${PORT:-7861}"
VOCABULARY="cat, cup;mug, table, person, flag, wall:stuff"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS

echo "[try_demo] 1/4 photos, tiny models and a database under $OUT"
mkdir -p "$OUT"
# written to a file first: a failure here stops the script (set -e does not see into "< <(...)")
"$PY" - "$OUT" > "$OUT/overrides.txt" <<'PYEOF'
import logging, sys
logging.basicConfig(level=logging.WARNING)
import retclip  # noqa: F401
from retclip.web_demo.tiny_example import model_overrides, prepare_tiny_example
paths = prepare_tiny_example(sys.argv[1])
for item in model_overrides(paths["clip"]) + ["MODEL.WEIGHTS", paths["weights"]]:
    print(item)
PYEOF
mapfile -t OPTS < "$OUT/overrides.txt"
CONFIG="$ROOT/configs/tests/tiny_retclip_convnext.yaml"

echo "[try_demo] 2/4 CLI demo -> $OUT/demo"
"$PY" "$ROOT/tools/demo.py" --config-file "$CONFIG" --input "$OUT/photos" --vocabulary "$VOCABULARY" \
    --database "$OUT/database" --output "$OUT/demo" "${OPTS[@]}" 2> "$OUT/demo.log"

echo "[try_demo] 3/4 database thumbnails -> $OUT/thumbnails_cat.png"
"$PY" "$ROOT/tools/inspect_database.py" thumbnails "$OUT/database" --class cat \
    --output "$OUT/thumbnails_cat.png" --max 9 --size 120 2>> "$OUT/demo.log"

echo "[try_demo] 4/4 web demo on http://127.0.0.1:$PORT"
"$PY" "$ROOT/tools/web_demo.py" --config-file "$CONFIG" --database "$OUT/database" --port "$PORT" \
    --examples-dir "$OUT/examples" "${OPTS[@]}" > "$OUT/web_demo.log" 2>&1 &
WEB=$!
trap 'kill $WEB 2>/dev/null || true' EXIT
for _ in $(seq 150); do
    if "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://127.0.0.1:$PORT/" 2>/dev/null; then break; fi
    kill -0 $WEB 2>/dev/null || { echo "[try_demo] web demo exited:"; tail -20 "$OUT/web_demo.log"; exit 1; }
    sleep 1
done
"$PY" -c "import urllib.request,sys; page = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(); \
assert 'gradio' in page.lower(), 'not a Gradio page'; print('[try_demo] web demo answers:', len(page), 'bytes')" \
    "http://127.0.0.1:$PORT/"
if [ "${KEEP_WEB:-0}" = "1" ]; then
    trap - EXIT
    echo "[try_demo] web demo left running (pid $WEB): open http://127.0.0.1:$PORT"
fi
echo "[try_demo] done in $((SECONDS - start)) s: pictures in $OUT/demo, thumbnails in $OUT/thumbnails_cat.png"
