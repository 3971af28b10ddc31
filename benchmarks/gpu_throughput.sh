#!/usr/bin/env bash
# BERT-Base pretraining throughput + MFU on one GPU with JAX (no TensorFlow).
# Needs Python 3.12 with jax[cuda] and keras 3 installed; run from anywhere:
#   bash benchmarks/gpu_throughput.sh [--batch_size=256 --windows=5 ...]
# Prints one JSON object (seq/s, tokens/s, achieved TFLOP/s, MFU).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
export KERAS_BACKEND=jax
# Let XLA take what it needs; keep the step's buffers preallocated.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
python3 - <<'PY'
import jax, keras
print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, keras {keras.__version__}")
PY
exec python3 benchmarks/gpu_throughput.py --size=base --seq=128 \
    --precision=mixed_bfloat16 "$@"
