#!/usr/bin/env bash
# Downloads, here, the wheels the lent accelerator machine lacks (it has no network; its
# image has jax, flax, optax, orbax, numpy, sympy, scikit-learn, pandas, matplotlib, but
# not grain or ml-collections): Python 3.12, manylinux x86_64, into .whl/ (git-ignored).
# .whl/pinned holds the flax, optax and orbax versions the tests here ran, which
# device_train.sh falls back to if the image's newer ones break the train step.
# Pass .whl in the device tool's `carry`; benchmarks/device_train.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl/pinned
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$@"
}
download -d .whl grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0
download -d .whl/pinned flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8
ls -la .whl .whl/pinned
