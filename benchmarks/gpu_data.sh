#!/usr/bin/env bash
# Prepares what `benchmarks/gpu_run.sh` carries to the GPU machine (which
# has JAX but no TensorFlow, Keras or Beam):
#   benchmarks/.gpu_data/records: the product's data job on the shared
#     pretraining corpus with Google's uncased vocab (seq 128, 20
#     predictions, dupe_factor $DUPE), gzip shards; the trainer re-masks
#     them on the device (`--masking=dynamic`);
#   .whl/: wheels of keras, keras-hub and their pure-Python needs.
# Both are git-ignored and must stay under the 64 MiB carry limit together.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-../shared/data}"
DUPE="${DUPE:-2}"
PY=.venv/bin/python
OUTDIR=benchmarks/.gpu_data/records
rm -rf "$OUTDIR" && mkdir -p "$(dirname "$OUTDIR")"
$PY -m pipelines.pretraining_data --input="$SHARED/corpus/*.txt.gz" \
  --vocab="$SHARED/vocab/bert-base-uncased-vocab.txt" --output_dir="$OUTDIR" \
  --max_seq_length=128 --max_predictions_per_seq=20 --dupe_factor="$DUPE" \
  --num_shards=8 --compression=gzip
cp "$SHARED/vocab/bert-base-uncased-vocab.txt" "$OUTDIR/vocab.txt"
rm -rf .whl && mkdir .whl
$PY -m pip download -q --no-deps -d .whl keras==3.15.1 keras-hub==0.32.0 \
  namex optree regex
du -sh "$OUTDIR" .whl
