#!/usr/bin/env bash
# BERT-Mini pretraining on the lent GPU for a fixed wall budget (JAX, no
# TensorFlow there); writes a model_dir for `model.finetune
# --init_checkpoint` under $OUT/bert_mini. Run from the repo root there:
#   BUDGET_S=300 bash benchmarks/gpu_pretrain.sh [more gpu_pretrain.py flags]
# Needs benchmarks/.gpu_data/pretrain.npz (benchmarks/gpu_pretrain_data.py,
# run here first) and the wheels in .whl/ (keras, namex, optree; the image
# has jax, numpy, h5py, pyyaml, ml-dtypes, absl-py, rich).
# `timeout` sends SIGTERM at BUDGET_S + 60 s: the script then stops its loop
# and still saves; SIGKILL 20 s later. Files come back from $OUT only up to
# 16 MiB each, so the 45 MB encoder.weights.h5 is split into 15 MiB parts:
#   cat DIR/encoder.weights.h5.part* > DIR/encoder.weights.h5
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"; mkdir -p "$OUT"
BUDGET_S="${BUDGET_S:-300}"
SITE="${SITE:-/tmp/site}"  # where the wheels are installed
WHEELS="${WHEELS:-.whl}"  # WHEELS=none: use the python3 environment as is
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHEELS"/keras-3*.whl "$WHEELS"/namex-*.whl \
    "$WHEELS"/optree-*.whl || exit 1
  export PYTHONPATH="$SITE":.
else
  export PYTHONPATH=.
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout -k 20 $((BUDGET_S + 60)) python3 benchmarks/gpu_pretrain.py \
  --seconds="$BUDGET_S" --model_dir="$OUT/bert_mini" "$@"
rc=$?
W="$OUT/bert_mini/encoder.weights.h5"
if [ -f "$W" ]; then
  sha256sum "$W"
  split -b 15M -d -a 1 "$W" "$W.part" && rm "$W"
fi
ls -l "$OUT/bert_mini"
exit $rc
