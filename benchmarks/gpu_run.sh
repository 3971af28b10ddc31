#!/usr/bin/env bash
# One call on a lent GPU machine (JAX, no TensorFlow there), <= 10 minutes,
# every number from the product command:
#   1. BERT-Base, seq 128, bf16, one GPU: `python -m model.pretrain`
#      (dynamic masking on the device) -> seq/s and MFU (benchmarks/mfu.py);
#   2. keras-hub's BertMaskedLM at the same size, same batch, in the same
#      lease (benchmarks/gpu_keras_hub.py) -> the ratio;
#   3. bert_mini pretrained by `model.pretrain --budget_minutes` for the
#      SST-2 table; its model_dir comes back in 15 MiB parts
#      (cat DIR/encoder.weights.h5.part* > DIR/encoder.weights.h5).
# Prepare here first: `bash benchmarks/gpu_data.sh` (records + wheels), then
#   run(command="bash benchmarks/gpu_run.sh",
#       carry=["benchmarks/.gpu_data", ".whl"], timeout_s=600)
# Dry run on this CPU (tiny sizes, a few steps, same commands):
#   DRY_RUN=1 bash benchmarks/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
DATA="${DATA:-benchmarks/.gpu_data/records}"
WORK="${WORK:-/tmp/gpu_run}"
rm -rf "$WORK" && mkdir -p "$WORK"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site --find-links .whl \
    keras keras-hub namex optree regex tokenizers || exit 1
  export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
PY="${PYTHON:-python3}"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
if [ "${DRY_RUN:-0}" = 1 ]; then
  BASE=pretrain/bert_tiny.yaml MINI=pretrain/bert_tiny.yaml BS=16
  BASE_STEPS=20 LOOP=5 MINI_MIN=1 PRECISION=float32
  export JAX_PLATFORMS=cpu
else
  BASE=pretrain/bert_base.yaml MINI=pretrain/bert_mini.yaml BS=256
  BASE_STEPS=600 LOOP=50 MINI_MIN="${MINI_MIN:-4}" PRECISION=mixed_bfloat16
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c "import jax, keras; print('jax', jax.__version__, jax.devices()[0].device_kind, 'keras', keras.__version__)"
common=(--data="$DATA" --batch_size=$BS --precision=$PRECISION --masking=dynamic
  --steps_per_loop=$LOOP --log_every=$LOOP --set=pretrain.keep_checkpoints=1)

echo "=== 1. model.pretrain $BASE: throughput ==="
timeout -k 10 240 "$PY" -m model.pretrain --config=$BASE "${common[@]}" \
  --model_dir="$WORK/base" --steps=$BASE_STEPS --save_every=1000000000 \
  2>&1 | grep -v "^step " | tail -5
"$PY" benchmarks/mfu.py "$WORK/base" --json="$OUT/ours_base.json"
cp "$WORK/base/metrics.jsonl" "$OUT/ours_base_metrics.jsonl" 2>/dev/null

echo "=== 2. keras-hub BertMaskedLM at the same size ==="
if "$PY" -c "import keras_hub" 2>/dev/null; then
  timeout -k 10 200 "$PY" benchmarks/gpu_keras_hub.py --config=$BASE \
    --batch_size=$BS --precision=$PRECISION --json="$OUT/kh_base.json" | tail -4
else
  echo "keras_hub not importable: carry its wheels in .whl (gpu_data.sh)"
fi

echo "=== 3. model.pretrain $MINI, budget $MINI_MIN min, for SST-2 ==="
timeout -k 20 $((MINI_MIN * 60 + 120)) "$PY" -m model.pretrain --config=$MINI \
  "${common[@]}" --model_dir="$WORK/mini" --steps=100000000 \
  --budget_minutes=$MINI_MIN --learning_rate=5e-4 \
  --set=pretrain.warmup_fraction=0.06 --save_every=1000000000 \
  2>&1 | grep -v "^step " | tail -5
"$PY" benchmarks/mfu.py "$WORK/mini" --json="$OUT/ours_mini.json" | tail -3
mkdir -p "$OUT/mini"
for f in config.yaml metrics.jsonl vocab.txt; do
  cp "$WORK/mini/$f" "$OUT/mini/" 2>/dev/null
done
W="$WORK/mini/encoder.weights.h5"
if [ -f "$W" ]; then
  sha256sum "$W" > "$OUT/mini/encoder.weights.h5.sha256"
  split -b 15M -d -a 1 "$W" "$OUT/mini/encoder.weights.h5.part"
fi
ls -l "$OUT" "$OUT/mini"
