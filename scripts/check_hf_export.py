"""Loads an exported Hugging Face directory with transformers and compares
its outputs with ours.

    python scripts/check_hf_export.py HF_DIR OURS.npz

Run with a Python that has torch and transformers (see
scripts/make_hf_fixtures.py). `OURS.npz` holds int32 `input_ids`,
`input_mask`, `segment_ids` `[batch, seq]` and our float32 outputs on them:
`logits` (a BertForSequenceClassification export), or `mlm_logits`
`[batch, seq, vocab]` at every position and `sentence_logits` (a
BertForPreTraining export), and optionally `sequence_output` /
`pooled_output`. Prints the max |diff| of each and exits 1 above 1e-4.
"""

import json
import os
import sys

import numpy as np
import torch
import transformers


def main(hf_dir, npz_path):
    ours = dict(np.load(npz_path))
    arch = json.load(open(os.path.join(hf_dir, "config.json")))["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    inputs = dict(
        input_ids=torch.tensor(ours["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(ours["input_mask"], dtype=torch.long),
        token_type_ids=torch.tensor(ours["segment_ids"], dtype=torch.long),
    )
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    theirs = {"sequence_output": out.hidden_states[-1].numpy()}
    if arch == "BertForSequenceClassification":
        theirs["logits"] = out.logits.numpy()
    if arch == "BertForPreTraining":
        theirs["mlm_logits"] = out.prediction_logits.numpy()
        theirs["sentence_logits"] = out.seq_relationship_logits.numpy()
    worst = 0.0
    for key, value in theirs.items():
        if key in ours:
            diff = float(np.max(np.abs(value - ours[key])))
            worst = max(worst, diff)
            print(f"{arch} {key}: max |diff| {diff:.2e}")
    print(
        f"tokenizer: {type(tokenizer).__name__}, {len(tokenizer)} tokens, "
        f"'Hello world' -> {tokenizer('Hello world')['input_ids']}"
    )
    sys.exit(1 if worst > 1e-4 else 0)


if __name__ == "__main__":
    main(*sys.argv[1:3])
