#!/usr/bin/env bash
# Data half of `make demo`: the shipped 1 MB sample -> pretraining TFRecords
# (+ metadata.json, config.yaml; 2 whole documents held out in OUT_DIR/eval/
# for the trainer's held-out masked-LM accuracy) -> a look with pipelines.inspect.
# Usage: scripts/demo_data.sh [OUT_DIR]   (default demo_output/pretraining)
# Extra flags for the job (e.g. Beam runner flags) via DEMO_DATA_FLAGS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-demo_output/pretraining}

"$PY" -m pipelines.pretraining_data \
  --input=data/sample_corpus.txt \
  --vocab=data/vocab.txt \
  --output_dir="$OUT" \
  --max_seq_length=128 --max_predictions_per_seq=20 \
  --dupe_factor=2 --num_shards=4 --seed=12345 \
  --eval_documents=2 \
  --overwrite ${DEMO_DATA_FLAGS:-}

"$PY" -m pipelines.inspect "$OUT" --num_instances=2
