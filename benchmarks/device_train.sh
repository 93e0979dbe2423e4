#!/usr/bin/env bash
# The device lease in one command (benchmarks/device_train.py says what it does):
#   here, once:    bash benchmarks/device_wheels.sh
#   device tool:   run(command="bash benchmarks/device_train.sh", carry=[".whl"], timeout_s=600)
# Everything it measures lands in $OUT (results.json, log.txt, the model file's parts,
# metrics.jsonl). Extra arguments go to device_train.py. If no train step runs at all
# (exit status 3: the image's flax/optax/orbax, newer than the ones the tests ran, broke
# an API), it runs once more with the versions pinned in .whl/pinned, within the same
# DEADLINE_MINUTES.
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
DEADLINE_MINUTES=9.3  # of the device tool's 10-minute command limit
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, optax, orbax.checkpoint, grain, numpy
print('versions: jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'orbax', orbax.checkpoint.__version__, 'numpy', numpy.__version__)" 2>&1 | tee "$OUT/versions.txt"
python3 benchmarks/device_train.py --out "$OUT" --deadline_minutes "$DEADLINE_MINUTES" "$@" \
  2>&1 | tee "$OUT/log.txt"
status=${PIPESTATUS[0]}
if [ "$status" = 3 ] && [ -d .whl/pinned ]; then
  echo "no train step ran: again with the pinned $(ls .whl/pinned | tr '\n' ' ')"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site_pinned .whl/pinned/*.whl || exit 1
  left=$(python3 -c "print(max($DEADLINE_MINUTES - $SECONDS / 60, 1.5))")
  PYTHONPATH=/tmp/site_pinned:/tmp/site python3 benchmarks/device_train.py --out "$OUT" \
    --deadline_minutes "$left" "$@" 2>&1 | tee "$OUT/log_pinned.txt"
  status=${PIPESTATUS[0]}
fi
exit "$status"
