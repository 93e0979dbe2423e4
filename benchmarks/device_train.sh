#!/usr/bin/env bash
# The device lease in one command (benchmarks/device_train.py says what it does):
#   here, once:    bash benchmarks/device_wheels.sh
#   device tool:   run(command="bash benchmarks/device_train.sh", carry=[".whl"], timeout_s=600)
# Everything it measures lands in $OUT (results.json, log.txt, the model file's parts,
# metrics.jsonl). Extra arguments go to device_train.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-device_out}"
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 benchmarks/device_train.py --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
