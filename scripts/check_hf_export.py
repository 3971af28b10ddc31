"""Loads a Hugging Face BERT directory with transformers and compares its
outputs (and its tokenizer) with ours.

    python scripts/check_hf_export.py HF_DIR OURS.npz

Run with a Python that has torch and transformers (see
scripts/make_hf_fixtures.py); `tests/model/test_real_checkpoint.py` and
`tests/model/test_huggingface_runs.py` write `OURS.npz` and run this. It
holds int32 `input_ids`, `input_mask`, `segment_ids` `[batch, seq]` and our
float32 outputs on them, any of: `sequence_output` `[batch, seq, hidden]`,
`pooled_output` `[batch, hidden]` (the tanh pooler), `logits`
`[batch, labels]` (a BertForSequenceClassification directory),
`mlm_logits` `[batch, seq, vocab]` at every position and `sentence_logits`
`[batch, 2]` (BertForPreTraining). With `texts` (`[batch]` strings) the
directory's own tokenizer must give exactly our `input_ids` for them.
Prints the max |diff| of each and exits 1 above 1e-4 (or on other ids).
"""

import json
import os
import sys

import numpy as np
import torch
import transformers

TOLERANCE = 1e-4


def main(hf_dir, npz_path):
    ours = dict(np.load(npz_path))
    config = json.load(open(os.path.join(hf_dir, "config.json")))
    arch = (config.get("architectures") or ["BertModel"])[0]
    model = getattr(transformers, arch).from_pretrained(hf_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    failed = False
    if "texts" in ours:
        seq = ours["input_ids"].shape[1]
        theirs_ids = tokenizer(
            [str(t) for t in ours["texts"]],
            padding="max_length",
            truncation=True,
            max_length=seq,
        )["input_ids"]
        same = np.array_equal(np.asarray(theirs_ids), ours["input_ids"])
        print(
            f"tokenizer ({type(tokenizer).__name__}): {len(ours['texts'])} texts, "
            f"ids {'identical' if same else 'DIFFER'}"
        )
        failed |= not same
    inputs = dict(
        input_ids=torch.tensor(ours["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(ours["input_mask"], dtype=torch.long),
        token_type_ids=torch.tensor(ours["segment_ids"], dtype=torch.long),
    )
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    theirs = {"sequence_output": out.hidden_states[-1].numpy()}
    if getattr(out, "pooler_output", None) is not None:
        theirs["pooled_output"] = out.pooler_output.numpy()
    if arch == "BertForSequenceClassification":
        theirs["logits"] = out.logits.numpy()
    if arch == "BertForPreTraining":
        theirs["mlm_logits"] = out.prediction_logits.numpy()
        theirs["sentence_logits"] = out.seq_relationship_logits.numpy()
    mask = ours["input_mask"].astype(bool)
    for key, value in theirs.items():
        if key not in ours:
            continue
        a, b = value, ours[key]
        if a.ndim == 3:  # padded positions are not outputs
            a, b = a[mask], b[mask]
        diff = float(np.max(np.abs(a - b)))
        failed |= diff > TOLERANCE
        print(f"{arch} {key}: max |diff| {diff:.2e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(*sys.argv[1:])
