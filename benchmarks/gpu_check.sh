#!/usr/bin/env bash
# The GPU check of issue 19, as one script: on a GPU machine (Python + torch + timm there), install what
# is missing from carried wheels, then run pipeline_bench and throughput_bench on CUDA and print one table.
# Fits in about 8 minutes on one H200 with 16 cores.
#
#   WHEELS=.gpu/wheels MANIFESTS=.gpu/manifests bash benchmarks/gpu_check.sh      (output also in $OUT/gpu_check.log)
#
# WHEELS: cp3xx manylinux wheels of openslide-python, openslide-bin, imagecodecs, simplejpeg, pydantic,
# pydantic-core, pydantic-settings, annotated-types, typing-inspection, python-dotenv (installed --no-deps).
# MANIFESTS: a copy of ../shared/manifests (the random real-size weights are written from them).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check}
WORK=${WORK:-/tmp/eagle-gpu-check}
WHEELS=${WHEELS:-.gpu/wheels}
MANIFESTS=${MANIFESTS:-.gpu/manifests}
mkdir -p "$OUT" "$WORK"
LOG="$OUT/gpu_check.log"
export PYTHONUNBUFFERED=1
exec > >(tee "$LOG") 2>&1

echo "== machine"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; $PY --version
if ! $PY -c "import openslide, pydantic_settings, simplejpeg, imagecodecs" 2>/dev/null; then
  echo "== installing missing packages from $WHEELS"
  $PY -m pip install -q --no-deps --no-index "$WHEELS"/*.whl || exit 1
fi
if [ ! -d ../shared/manifests ]; then mkdir -p ../shared && cp -r "$MANIFESTS" ../shared/manifests || exit 1; fi

bench() { echo; echo "== $*"; timeout "${STEP_TIMEOUT:-200}" $PY "$@" --workdir "$WORK" --weights-dir "$WORK/weights" \
  | tee -a "$OUT/results.txt"; }
# STEPS picks and orders the runs (default: all of them); "sweep" is the reader alone at 8 and 24 processes.
STEPS=${STEPS:-"pipeline throughput aperio aperio-dct bf16 sweep"}
for step in $STEPS; do case $step in
  pipeline) bench benchmarks/pipeline_bench.py --device cuda --tiles 2000 --mpp 0.5 --repeats 3 --baseline ;;
  throughput) bench benchmarks/throughput_bench.py --device cuda --slides 16 --tiles 2000 --mpp 0.5 ${BASELINE:---baseline --baseline-slides 4} ;;
  aperio) bench benchmarks/throughput_bench.py --device cuda --slides 16 --tiles 500 --mpp 0.25 --level-step 4 ;;
  aperio-dct) bench benchmarks/throughput_bench.py --device cuda --slides 16 --tiles 500 --mpp 0.25 --level-step 4 --dct ;;
  bf16) bench benchmarks/throughput_bench.py --device cuda --slides 16 --tiles 2000 --mpp 0.5 --precision bf16 ;;
  sweep) for w in 8 24; do
           bench benchmarks/throughput_bench.py --device cuda --slides 8 --tiles 2000 --mpp 0.5 --read-workers $w --reader-only
         done ;;
esac; done

echo; echo "== summary (one line per run)"
grep -E "^command:|seconds per slide \(median|ratio baseline|^RESULT|ratio:|busy" "$OUT/results.txt"
