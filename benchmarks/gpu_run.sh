#!/usr/bin/env bash
# One-shot GPU check (what a session lent a GPU runs): BERT-Base, seq 128,
# ours vs keras-hub's BertMaskedLM with the same jitted JAX step, bf16 and
# and an encoder-only ablation (float32 and dropout-0
# runs: pass the flags by hand). Wheels for keras, keras-hub and their
# pure-Python needs travel in .whl/ (the GPU image has JAX but no
# TensorFlow or Keras). Results as JSON under $OUT (or ./gpu_results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
BS="${BATCH_SIZE:-256}"
run() {
  timeout 200 python3 "$@" --size=base --seq=128 --batch_size=$BS 2>&1 |
    grep '"seq_per_s"\|"mfu"\|"model"\|"backbone_only"\|rror'
}
run benchmarks/gpu_throughput.py --precision=mixed_bfloat16 --json=$OUT/ours_bf16.json
run benchmarks/gpu_keras_hub.py --precision=mixed_bfloat16 --json=$OUT/kh_bf16.json
run benchmarks/gpu_throughput.py --precision=mixed_bfloat16 --backbone_only --json=$OUT/ours_bf16_encoder.json
run benchmarks/gpu_keras_hub.py --precision=mixed_bfloat16 --backbone_only --json=$OUT/kh_bf16_encoder.json
