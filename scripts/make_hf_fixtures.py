"""Writes the Hugging Face BERT fixtures of `tests/model/hf_fixtures/`.

    python scripts/make_hf_fixtures.py [OUT_DIR]

Run with a Python that has torch and transformers 4.x (not the project's
venv: `make test` needs neither). One way on Debian 12:

    apt-get install -y python3-torch                  # CPU torch 1.13
    /usr/bin/python3 -m venv --system-site-packages /tmp/hfvenv
    /tmp/hfvenv/bin/pip install "transformers==4.36.2"
    /tmp/hfvenv/bin/python scripts/make_hf_fixtures.py

Each fixture is a directory that transformers itself wrote with
`save_pretrained` (2 layers, hidden 32, a 96-token vocabulary: a few
dozen KB), plus `expected.npz`: the fixed inputs (`input_ids`,
`input_mask`, `segment_ids`, int32 `[2, 12]`, the second row padded) and
transformers' float32 outputs on them (`sequence_output` `[2, 12, 32]`,
`pooled_output` `[2, 32]`, and where the layout has them `mlm_logits`
`[2, 12, 96]` at every position, `nsp_logits` `[2, 2]`, `logits`
`[2, num_labels]`, `mean_pooled` `[2, 32]`), and `tokens.json`: what the
checkpoint's own tokenizer makes of a few sentences. Weights in bf16/fp16
are saved in that dtype; their expected outputs come from the same rounded
weights run in float32 (the import upcasts, so parity is still float32).
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
import transformers

VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "!", "?", "'"]
    + "the a an is was it this that movie film good bad great awful not very "
    "and but of to in story actors plot funny boring love hate best worst "
    "fun dull i you we they one two its no yes more less all some time "
    "life world man woman new old".split()
    + ["##s", "##ed", "##ing", "##ly", "##er", "##est", "##n", "##t", "##e"]
    + ["b", "c", "d", "e", "f", "g", "h", "k", "l", "m", "n", "o", "p", "r"]
    + ["s", "t", "u", "w", "y", "é", "Good", "Bad", "The", "Movie", "[unused0]"]
)
VOCAB += [f"[unused{i}]" for i in range(1, 96 - len(VOCAB) + 1)]
assert len(VOCAB) == 96, len(VOCAB)

SENTENCES = [
    "The movie was very good!",
    "it is not a bad film, but the plot is boring.",
    "Good acting; Café the worst",
]

INPUT_IDS = np.array(
    [
        [2, 12, 16, 17, 13, 18, 7, 3, 15, 24, 19, 3],
        [2, 11, 23, 28, 5, 3, 40, 41, 3, 0, 0, 0],
    ],
    np.int32,
)
INPUT_MASK = (np.arange(12)[None, :] < np.array([[12], [9]])).astype(np.int32)
SEGMENT_IDS = np.array([[0] * 8 + [1] * 4, [0] * 6 + [1] * 3 + [0] * 3], np.int32)


def small_config(**overrides):
    values = dict(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    values.update(overrides)
    return transformers.BertConfig(**values)


def randomize(model, seed):
    """Every parameter drawn anew (std 0.2, LayerNorm around 1): untrained
    weights would leave LayerNorm gains at 1 and biases at 0 and hide
    mistakes in their mapping."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.2
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def outputs(model, kind):
    model.eval()
    inputs = dict(
        input_ids=torch.tensor(INPUT_IDS, dtype=torch.long),
        attention_mask=torch.tensor(INPUT_MASK, dtype=torch.long),
        token_type_ids=torch.tensor(SEGMENT_IDS, dtype=torch.long),
    )
    result = {
        "input_ids": INPUT_IDS,
        "input_mask": INPUT_MASK,
        "segment_ids": SEGMENT_IDS,
    }
    with torch.no_grad():
        bert = model if kind == "BertModel" else model.bert
        base = bert(**inputs)
        result["sequence_output"] = base.last_hidden_state.float().numpy()
        if base.pooler_output is not None:
            result["pooled_output"] = base.pooler_output.float().numpy()
        if kind == "BertModel":
            mask = inputs["attention_mask"][..., None].float()
            summed = (base.last_hidden_state * mask).sum(1)
            result["mean_pooled"] = (summed / mask.sum(1).clamp(min=1e-9)).numpy()
        if kind == "BertForPreTraining":
            out = model(**inputs)
            result["mlm_logits"] = out.prediction_logits.float().numpy()
            result["nsp_logits"] = out.seq_relationship_logits.float().numpy()
        if kind == "BertForMaskedLM":
            result["mlm_logits"] = model(**inputs).logits.float().numpy()
        if kind == "BertForSequenceClassification":
            result["logits"] = model(**inputs).logits.float().numpy()
    return {
        k: np.asarray(v, np.int32 if "id" in k or "mask" in k else np.float32)
        for k, v in result.items()
    }


def write_vocab(path):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")


def tokenizer_for(directory, lower_case):
    vocab = os.path.join(directory, "vocab.txt")
    write_vocab(vocab)
    return transformers.BertTokenizerFast(vocab, do_lower_case=lower_case)


def token_examples(tokenizer):
    return [{"text": s, "input_ids": tokenizer(s)["input_ids"]} for s in SENTENCES]


def fixture(
    out,
    name,
    kind,
    *,
    seed,
    config=None,
    dtype=None,
    shard=None,
    lower_case=True,
    tokenizer_json_only=False,
    sentence_transformers=False,
    num_labels=None,
):
    directory = os.path.join(out, name)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    config = config or small_config()
    if num_labels:
        config.num_labels = num_labels
        config.id2label = {i: f"class_{i}" for i in range(num_labels)}
        config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(seed)
    model = getattr(transformers, kind)(config)
    randomize(model, seed)
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"safe_serialization": True}
    if shard:
        kwargs["max_shard_size"] = shard
    model.save_pretrained(directory, **kwargs)
    # Expected outputs: the saved (possibly rounded) weights, in float32.
    model = model.float()
    np.savez_compressed(os.path.join(directory, "expected.npz"), **outputs(model, kind))
    tokenizer = tokenizer_for(directory, lower_case)
    tokenizer.save_pretrained(directory)
    with open(os.path.join(directory, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(token_examples(tokenizer), f, indent=1)
    if tokenizer_json_only:
        os.remove(os.path.join(directory, "vocab.txt"))
    if sentence_transformers:
        os.makedirs(os.path.join(directory, "1_Pooling"))
        with open(os.path.join(directory, "1_Pooling", "config.json"), "w") as f:
            json.dump(
                {
                    "word_embedding_dimension": config.hidden_size,
                    "pooling_mode_cls_token": False,
                    "pooling_mode_mean_tokens": True,
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                },
                f,
                indent=2,
            )
        modules = [
            {
                "idx": 0,
                "name": "0",
                "path": "",
                "type": "sentence_transformers.models.Transformer",
            },
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        with open(os.path.join(directory, "modules.json"), "w") as f:
            json.dump(modules, f, indent=2)
        with open(os.path.join(directory, "sentence_bert_config.json"), "w") as f:
            json.dump({"max_seq_length": 64, "do_lower_case": False}, f)
    print(
        f"{name}: {sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(directory) for n in ns) / 1024:.0f} KB"
    )


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.path.join(here, "..", "tests", "model", "hf_fixtures")
    )
    os.makedirs(out, exist_ok=True)
    fixture(out, "bert_model", "BertModel", seed=1)
    fixture(out, "pretraining", "BertForPreTraining", seed=2)
    fixture(out, "masked_lm", "BertForMaskedLM", seed=3)
    fixture(
        out,
        "sequence_classification",
        "BertForSequenceClassification",
        seed=4,
        num_labels=3,
    )
    fixture(
        out, "sentence_transformers", "BertModel", seed=5, sentence_transformers=True
    )
    # Non-default config values that the import must honour.
    fixture(
        out,
        "gelu_new",
        "BertModel",
        seed=6,
        config=small_config(
            hidden_act="gelu_new",
            layer_norm_eps=1e-7,
            type_vocab_size=3,
            max_position_embeddings=40,
        ),
    )
    fixture(out, "relu", "BertModel", seed=7, config=small_config(hidden_act="relu"))
    fixture(out, "bf16", "BertForPreTraining", seed=8, dtype=torch.bfloat16)
    fixture(out, "fp16", "BertModel", seed=9, dtype=torch.float16)
    fixture(out, "sharded", "BertForMaskedLM", seed=10, shard="20KB")
    fixture(
        out,
        "tokenizer_json_only",
        "BertModel",
        seed=11,
        lower_case=False,
        tokenizer_json_only=True,
    )
    with open(os.path.join(out, "VERSIONS"), "w") as f:
        f.write(f"transformers {transformers.__version__}\ntorch {torch.__version__}\n")


if __name__ == "__main__":
    main()
