#!/usr/bin/env bash
# One run of the product's loop (bench.gpu.loop) on a bare GPU machine, as the runs in
# bench/gpu/results were made:
#
#   bench/gpu/run-loop.sh N MODE SERVERS WITHIN [bench.gpu.loop flags ...]
#   bench/gpu/run-loop.sh 126 mps 17 545                      # CUDA graph under MPS
#   bench/gpu/run-loop.sh 127 time-slicing 9 500 --bodies eager
#
# It unpacks .gpu/ (make gpu-carry) where that is not done yet (into GPU_SITE, default
# /tmp/site, STAGGER_TRITON_HOME and STAGGER_NUMPY_DIR; each set empty: what this Python
# has, as on a development machine's dry run), heads the log with the GPU,
# its processes and a digest of the tree's Python sources (a copied tree's git metadata
# can be stale: compare with `bench/gpu/run-loop.sh --digest` where the tree was made),
# runs the loop with the Job's calibration, 3,000 frames a configuration and its slots
# straight to Triton, and writes runN.log, runN.json and runN-cams.tar.xz to $OUT
# (default out/gpu). The JSON is copied every 10 s, so a run cut by a time limit keeps the
# configurations it finished.
set -euo pipefail
cd "$(dirname "$0")/../.."
digest() {
  find stagger sidecar operator bench stagger_testkit -name '*.py' -not -path '*/__pycache__/*' \
    | LC_ALL=C sort | xargs sha1sum | sha1sum | cut -c1-12
}
if [ "${1:-}" = "--digest" ]; then digest; exit 0; fi
if [ $# -lt 4 ]; then sed -n '2,17p' "$0"; exit 2; fi
N=$1 MODE=$2 SERVERS=$3 WITHIN=$4; shift 4
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
SITE=${GPU_SITE-/tmp/site}
export STAGGER_TRITON_HOME=${STAGGER_TRITON_HOME-/tmp/triton}
export STAGGER_NUMPY_DIR=${STAGGER_NUMPY_DIR-/tmp/np126}
export PYTHONPATH=${SITE:+$SITE:}$PWD:$PWD/sidecar:$PWD/operator PYTHONUNBUFFERED=1
if [ -n "$SITE" ] && [ ! -d "$SITE/kubernetes" ]; then
  mkdir -p "$SITE" && tar xJf .gpu/site.tar.xz -C "$SITE"
fi
if [ -n "$STAGGER_NUMPY_DIR" ] && [ ! -d "$STAGGER_NUMPY_DIR/numpy" ]; then
  mkdir -p "$STAGGER_NUMPY_DIR" && tar xJf .gpu/np126.tar.xz -C "$STAGGER_NUMPY_DIR"
fi
if [ -n "$STAGGER_TRITON_HOME" ] && [ ! -e "$STAGGER_TRITON_HOME/tritonserver" ]; then
  mkdir -p "$STAGGER_TRITON_HOME" && tar xJf .gpu/triton-bundle.tar.xz -C "$STAGGER_TRITON_HOME"
fi
python3 -c "import stagger_operator.manifests"  # the carry's packages import
{
  nvidia-smi --query-gpu=name,driver_version,memory.used,utilization.gpu --format=csv
  nvidia-smi --query-compute-apps=pid,process_name --format=csv
  echo "tree digest $(digest), $(nproc) CPUs"
} | tee "$OUT/run$N.log"
RUN=/tmp/loop$N
( while sleep 10; do cp "$RUN/$MODE/loop.json" "$OUT/run$N.json" 2>/dev/null || true; done ) &
copier=$!
status=0
timeout $((WITHIN + 15)) python3 -m bench.gpu.loop --out "$RUN" --mode "$MODE" \
  --servers "$SERVERS" --bodies graph --calibrate-with job --frames 3000 --slots-direct \
  --within "$WITHIN" "$@" 2>&1 | grep --line-buffered -v '"WARNING"' | cut -c1-1500 \
  | tee -a "$OUT/run$N.log" || status=$?
kill "$copier"
cp "$RUN/$MODE/loop.json" "$OUT/run$N.json" 2>/dev/null || true
(cd "$RUN/$MODE" && tar cJf - ./*-cam*.json) > "$OUT/run$N-cams.tar.xz"
exit "$status"
