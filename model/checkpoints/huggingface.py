"""Hugging Face BERT directories, in (import) and out (export).

A directory as transformers' `save_pretrained` writes it: `config.json`
(`model_type: bert`), `model.safetensors` or a sharded
`model.safetensors.index.json`, and `vocab.txt` and/or a WordPiece
`tokenizer.json` with `tokenizer_config.json`. Accepted layouts:
`BertModel` (names `embeddings.*`, `encoder.*`, `pooler.*`),
`BertForPreTraining` / `BertForMaskedLM` / `BertForSequenceClassification`
(the same under `bert.`, plus `cls.*` or `classifier.*`), and
sentence-transformers directories (`modules.json`: the transformer module's
folder holds the BERT directory; `1_Pooling/config.json` says how it pools).
float32, float16 and bfloat16 tensors load (upcast to float32, exactly).

`TENSOR_MAP` is the one name mapping, read left to right on import and
right to left on export. torch stores a Linear's weight `[out, in]`, Keras
a Dense kernel `[in, out]` ("linear": transposed both ways); our attention
fuses query, key and value in one `[hidden, 3 * hidden]` kernel ("qkv":
the three transposed, concatenated along the output axis, and split again
on export).
"""

from __future__ import annotations

import json
import os

import numpy as np

from configs import features, fileio
from configs.schema import ConfigError, ModelConfig
from model.checkpoints import safetensors

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
MODULES_FILE = "modules.json"  # sentence-transformers

SUPPORTED = (
    "Hugging Face BERT (model_type 'bert': BertModel, BertForPreTraining, "
    "BertForMaskedLM, BertForSequenceClassification, sentence-transformers BERT)"
)
# config.json `hidden_act` -> `ModelConfig.activation`.
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
    "gelu_fast": "gelu_approximate",
    "relu": "relu",
}
# ...and back (export writes the canonical name).
ACTIVATION_NAMES = {"gelu": "gelu", "gelu_approximate": "gelu_new", "relu": "relu"}
# Other formats' files, each with what to do about it.
_OTHER_WEIGHTS = {
    "pytorch_model.bin": "a torch pickle; convert it once with transformers: "
    "`AutoModel.from_pretrained(DIR).save_pretrained(DIR, "
    "safe_serialization=True)` (writes model.safetensors)",
    "tf_model.h5": "Keras 2 weights of transformers' TF classes; save it as "
    "safetensors with transformers (`save_pretrained(DIR, "
    "safe_serialization=True)`)",
    "flax_model.msgpack": "Flax weights; save it as safetensors with "
    "transformers (`save_pretrained(DIR, safe_serialization=True)`)",
}
# Buffers, not weights: skipped.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


# === The mapping (one table, both directions) ===
def tensor_map(num_layers: int) -> list[tuple[str, object, str]]:
    """The encoder's `[(our weight path, HF name(s), how)]`.

    Our paths are `BertBackbone` weight paths; HF names are `BertModel`'s
    (no `bert.` prefix). `how` is "copy", "linear" (transpose) or "qkv"
    (three HF Linear weights or biases <-> our fused one). LayerNorm
    weights are `.weight`/`.bias` (older files say `.gamma`/`.beta`:
    `_aliases` accepts both on import).
    """
    m = [
        ("token_embedding/embeddings", "embeddings.word_embeddings.weight", "copy"),
        (
            "position_embedding/embeddings",
            "embeddings.position_embeddings.weight",
            "copy",
        ),
        (
            "segment_embedding/embeddings",
            "embeddings.token_type_embeddings.weight",
            "copy",
        ),
    ]
    m += _layer_norm("embeddings_layer_norm", "embeddings.LayerNorm")
    for i in range(num_layers):
        ours, hf = f"transformer_layer_{i}", f"encoder.layer.{i}"
        parts = ("query", "key", "value")
        m += [
            (
                f"{ours}/self_attention_qkv/kernel",
                tuple(f"{hf}.attention.self.{p}.weight" for p in parts),
                "qkv",
            ),
            (
                f"{ours}/self_attention_qkv/bias",
                tuple(f"{hf}.attention.self.{p}.bias" for p in parts),
                "qkv",
            ),
        ]
        m += _dense(f"{ours}/self_attention_output", f"{hf}.attention.output.dense")
        m += _layer_norm(
            f"{ours}/self_attention_layer_norm", f"{hf}.attention.output.LayerNorm"
        )
        m += _dense(
            f"{ours}/feedforward_intermediate_dense", f"{hf}.intermediate.dense"
        )
        m += _dense(f"{ours}/feedforward_output_dense", f"{hf}.output.dense")
        m += _layer_norm(f"{ours}/feedforward_layer_norm", f"{hf}.output.LayerNorm")
    return m


POOLER_MAP = [
    ("pooled_dense/kernel", "pooler.dense.weight", "linear"),
    ("pooled_dense/bias", "pooler.dense.bias", "copy"),
]
# `BertPretrainer` weight paths <-> `BertForPreTraining` head names. The MLM
# decoder is tied to the word embeddings: only its bias is a tensor.
MLM_HEAD_MAP = [
    (
        "mlm_head/transform_dense/kernel",
        "cls.predictions.transform.dense.weight",
        "linear",
    ),
    ("mlm_head/transform_dense/bias", "cls.predictions.transform.dense.bias", "copy"),
    (
        "mlm_head/transform_layer_norm/gamma",
        "cls.predictions.transform.LayerNorm.weight",
        "copy",
    ),
    (
        "mlm_head/transform_layer_norm/beta",
        "cls.predictions.transform.LayerNorm.bias",
        "copy",
    ),
    ("mlm_head/output_bias", "cls.predictions.bias", "copy"),
]
NSP_HEAD_MAP = [
    ("sentence_head/output_dense/kernel", "cls.seq_relationship.weight", "linear"),
    ("sentence_head/output_dense/bias", "cls.seq_relationship.bias", "copy"),
]
# `BertClassifier` <-> `BertForSequenceClassification`.
CLASSIFIER_MAP = [
    ("logits/kernel", "classifier.weight", "linear"),
    ("logits/bias", "classifier.bias", "copy"),
]


def _dense(ours, hf):
    return [
        (f"{ours}/kernel", f"{hf}.weight", "linear"),
        (f"{ours}/bias", f"{hf}.bias", "copy"),
    ]


def _layer_norm(ours, hf):
    return [
        (f"{ours}/gamma", f"{hf}.weight", "copy"),
        (f"{ours}/beta", f"{hf}.bias", "copy"),
    ]


def _aliases(name):
    """Names a tensor may have in a file: as given, and LayerNorm's old
    `gamma`/`beta` (bert-base-uncased and other early uploads)."""
    if ".LayerNorm." in name:
        return (name, name.replace(".weight", ".gamma").replace(".bias", ".beta"))
    return (name,)


def to_ours(tensors: dict, hf, how) -> np.ndarray:
    """HF tensor(s) -> our weight's value (see `tensor_map`)."""
    if how == "qkv":
        parts = [tensors[n] for n in hf]
        return np.concatenate([p.T if p.ndim == 2 else p for p in parts], axis=-1)
    value = tensors[hf]
    return value.T if how == "linear" else value


def to_hf(value: np.ndarray, hf, how) -> dict:
    """Our weight's value -> `{HF name: tensor}` (the inverse of `to_ours`)."""
    value = np.asarray(value, np.float32)
    if how == "qkv":
        parts = np.split(value, 3, axis=-1)
        return {
            n: np.ascontiguousarray(p.T if p.ndim == 2 else p)
            for n, p in zip(hf, parts)
        }
    return {hf: np.ascontiguousarray(value.T if how == "linear" else value)}


# === Reading a directory ===
def is_checkpoint(path: str) -> bool:
    """True if `path` is a directory with a Hugging Face `config.json` (or a
    sentence-transformers `modules.json` pointing at one)."""
    return fileio.isdir(path) and (
        fileio.exists(fileio.join(path, CONFIG_FILE))
        and not fileio.exists(fileio.join(path, "config.yaml"))
        or fileio.exists(fileio.join(path, MODULES_FILE))
    )


def model_directory(path: str) -> str:
    """The directory holding config.json and the weights: `path` itself, or
    a sentence-transformers directory's Transformer module folder."""
    modules = fileio.join(path, MODULES_FILE)
    if fileio.exists(modules):
        for module in _read_json(modules):
            if str(module.get("type", "")).endswith("models.Transformer"):
                inner = (
                    fileio.join(path, module.get("path", ""))
                    if module.get("path")
                    else path
                )
                if fileio.exists(fileio.join(inner, CONFIG_FILE)):
                    return inner
    return path


def read_config(path: str) -> tuple[ModelConfig, dict]:
    """`config.json` -> (our ModelConfig, the raw dict).

    Raises:
        ConfigError: another architecture or a setting we cannot honour (one
            line, naming the file, the value and what is supported).
    """
    config_path = fileio.join(path, CONFIG_FILE)
    raw = _read_json(config_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path} is not a JSON object")
    model_type = raw.get("model_type")
    if model_type != "bert":
        arch = ", ".join(raw.get("architectures") or []) or "no architectures"
        raise ConfigError(
            f"{config_path}: model_type {model_type!r} ({arch}) is not "
            f"supported; supported: {SUPPORTED}"
        )
    act = raw.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ConfigError(
            f"{config_path}: hidden_act {act!r} is not supported; supported: "
            f"{', '.join(HF_ACTIVATIONS)}"
        )
    position = raw.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ConfigError(
            f"{config_path}: position_embedding_type {position!r} is not "
            "supported (only 'absolute', BERT's)"
        )
    for flag in ("is_decoder", "add_cross_attention"):
        if raw.get(flag):
            raise ConfigError(
                f"{config_path}: {flag} is set; only BERT encoders are supported"
            )
    try:
        cfg = ModelConfig(
            vocabulary_size=int(raw["vocab_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=int(raw["num_attention_heads"]),
            hidden_dim=int(raw["hidden_size"]),
            intermediate_dim=int(raw["intermediate_size"]),
            max_sequence_length=int(raw.get("max_position_embeddings", 512)),
            num_segments=int(raw.get("type_vocab_size", 2)),
            dropout=float(raw.get("hidden_dropout_prob", 0.1)),
            initializer_range=float(raw.get("initializer_range", 0.02)),
            activation=HF_ACTIVATIONS[act],
            layer_norm_epsilon=float(raw.get("layer_norm_eps", 1e-12)),
        )
    except KeyError as e:
        raise ConfigError(f"{config_path} lacks {e.args[0]}")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{config_path}: {e}")
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}")
    return cfg, raw


def weight_files(path: str) -> list[str]:
    """The safetensors files of `path` (one, or the shards of the index).

    Raises:
        ConfigError: none there (naming any other format's file and how to
            get safetensors), or an index naming missing shards.
    """
    index = fileio.join(path, INDEX_FILE)
    if fileio.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConfigError(f"{index} has no weight_map")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not fileio.exists(fileio.join(path, shard)):
                raise ConfigError(f"{index} names {shard}, which is not in {path}")
        return [fileio.join(path, s) for s in shards]
    single = fileio.join(path, WEIGHTS_FILE)
    if fileio.exists(single):
        return [single]
    for name, advice in _OTHER_WEIGHTS.items():
        if fileio.exists(fileio.join(path, name)) or fileio.exists(
            fileio.join(path, name + ".index.json")
        ):
            raise ConfigError(
                f"{path} holds {name} but no {WEIGHTS_FILE}: {name} is {advice}"
            )
    raise ConfigError(
        f"{path} has {CONFIG_FILE} but no {WEIGHTS_FILE} (or {INDEX_FILE})"
    )


def read_weights(path: str) -> dict[str, np.ndarray]:
    """Every tensor of the directory, float32, names without `bert.`.

    Raises:
        ConfigError: a file cut short or whose header lies (one line).
    """
    tensors = {}
    for file in weight_files(path):
        try:
            found = safetensors.read(file)
        except safetensors.SafetensorsError as e:
            raise ConfigError(str(e))
        for name, value in found.items():
            name = name[len("bert.") :] if name.startswith("bert.") else name
            if name not in _BUFFERS:
                tensors[name] = value
    return tensors


def read_vocab(path: str) -> tuple[list[str], str]:
    """(tokens in id order, the file they came from): `vocab.txt`, else a
    WordPiece `tokenizer.json`. Raises ConfigError if neither is usable."""
    vocab_txt = fileio.join(path, VOCAB_FILE)
    if fileio.exists(vocab_txt):
        return features.read_vocab(vocab_txt), vocab_txt
    tok_path = fileio.join(path, TOKENIZER_FILE)
    if not fileio.exists(tok_path):
        raise ConfigError(f"{path} has neither {VOCAB_FILE} nor {TOKENIZER_FILE}")
    model = _read_json(tok_path).get("model") or {}
    if model.get("type") != "WordPiece":
        raise ConfigError(
            f"{tok_path} is a {model.get('type')} tokenizer; only WordPiece "
            "(BERT's) is supported"
        )
    by_id = {int(i): t for t, i in model.get("vocab", {}).items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ConfigError(f"{tok_path}: WordPiece ids are not 0..{len(by_id) - 1}")
    return [by_id[i] for i in range(len(by_id))], tok_path


def read_lower_case(path: str):
    """Lower-casing from `tokenizer_config.json`, else the tokenizer.json
    normalizer; None when neither says (BertTokenizer's default is True).

    Raises ConfigError if accents are stripped differently from the casing
    (our WordPiece lower-cases and strips accents together, as BERT's).
    """
    lower, strip = None, None
    cfg_path = fileio.join(path, TOKENIZER_CONFIG_FILE)
    if fileio.exists(cfg_path):
        cfg = _read_json(cfg_path)
        lower, strip = cfg.get("do_lower_case"), cfg.get("strip_accents")
    tok_path = fileio.join(path, TOKENIZER_FILE)
    if lower is None and fileio.exists(tok_path):
        norm = _read_json(tok_path).get("normalizer") or {}
        if norm.get("type") == "BertNormalizer":
            lower, strip = norm.get("lowercase"), norm.get("strip_accents")
    if lower is not None and strip is not None and bool(strip) != bool(lower):
        raise ConfigError(
            f"{path}: strip_accents={strip} with do_lower_case={lower} is not "
            "supported (accents are stripped exactly when lower-casing)"
        )
    return None if lower is None else bool(lower)


def read_pooling(path: str):
    """ "mean" or "cls" from a sentence-transformers `1_Pooling/config.json`
    (found through `modules.json`); None when the directory does not say."""
    modules = fileio.join(path, MODULES_FILE)
    folders = []
    if fileio.exists(modules):
        folders = [
            m.get("path", "")
            for m in _read_json(modules)
            if str(m.get("type", "")).endswith("models.Pooling")
        ]
    for folder in folders or ["1_Pooling"]:
        cfg_path = fileio.join(path, folder, CONFIG_FILE)
        if fileio.exists(cfg_path):
            cfg = _read_json(cfg_path)
            if cfg.get("pooling_mode_mean_tokens"):
                return "mean"
            if cfg.get("pooling_mode_cls_token"):
                return "cls"
    return None


def _read_json(path):
    try:
        return json.loads(fileio.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})")


# === Loading into our models ===
def _assign(model_weights, entries, tensors, file_hint, what):
    """Assigns `entries` whose tensors are all present; returns
    (assigned count, missing HF names)."""
    missing, done = [], 0
    for ours, hf, how in entries:
        names = hf if isinstance(hf, tuple) else (hf,)
        found = {}
        for name in names:
            alias = next((a for a in _aliases(name) if a in tensors), None)
            if alias is None:
                missing.append(name)
                break
            found[name] = tensors[alias]
        else:
            variable = model_weights.get(ours)
            if variable is None:
                raise ValueError(f"our {what} has no weight {ours}")
            value = to_ours(found, hf, how)
            if tuple(value.shape) != tuple(variable.shape):
                raise ConfigError(
                    f"{file_hint}: {names[0]} has shape {list(found[names[0]].shape)}"
                    f", but config.json gives {ours} the shape {list(variable.shape)}"
                )
            variable.assign(value.astype(variable.dtype))
            done += 1
    return done, missing


def _weights_by_path(model):
    return {_strip_model_prefix(w.path): w for w in model.weights}


def _strip_model_prefix(path):
    # Keras 3 names sublayer weights without the model's name; be lenient.
    return path.split("/", 1)[1] if path.startswith("bert_") else path


def load_backbone(backbone, path: str, tensors=None) -> list[str]:
    """Assigns the directory's encoder (and pooler) to `backbone`.

    Returns notes for the user (e.g. "pooler absent: initialised").

    Raises:
        ConfigError: a tensor the encoder needs is missing, a shape
            disagrees with config.json, or a file is damaged.
    """
    path = model_directory(path)
    tensors = read_weights(path) if tensors is None else tensors
    hint = weight_files(path)[0]
    extra_layer = f"encoder.layer.{backbone.num_layers}.output.dense.weight"
    if extra_layer in tensors:
        raise ConfigError(
            f"{hint} has more than the {backbone.num_layers} layers of "
            "config.json's num_hidden_layers"
        )
    weights = {w.path: w for w in backbone.weights}
    _, missing = _assign(
        weights, tensor_map(backbone.num_layers), tensors, hint, "encoder"
    )
    if missing:
        raise ConfigError(
            f"{hint} lacks {missing[0]} (and {len(missing) - 1} more encoder "
            "tensors): not a BERT encoder"
        )
    notes = []
    _, missing = _assign(weights, POOLER_MAP, tensors, hint, "encoder")
    if missing:
        notes.append(f"{path} has no pooler (pooler.dense): initialised at random")
    decoder = tensors.get("cls.predictions.decoder.weight")
    if decoder is not None and not np.allclose(
        decoder, tensors["embeddings.word_embeddings.weight"], atol=1e-6
    ):
        raise ConfigError(
            f"{hint}: cls.predictions.decoder.weight differs from the word "
            "embeddings (an untied MLM decoder is not supported)"
        )
    return notes


def load_pretraining_heads(pretrainer, path: str, tensors=None) -> list[str]:
    """Assigns the MLM and NSP heads where the directory has them; returns
    one note per head initialised instead."""
    path = model_directory(path)
    tensors = read_weights(path) if tensors is None else tensors
    hint = weight_files(path)[0]
    weights = _weights_by_path(pretrainer)
    notes = []
    for name, entries in (
        ("MLM head (cls.predictions)", MLM_HEAD_MAP),
        ("NSP head (cls.seq_relationship)", NSP_HEAD_MAP),
    ):
        done, missing = _assign(weights, entries, tensors, hint, "pretrainer")
        if missing and done:
            raise ConfigError(f"{hint}: the {name} is incomplete (no {missing[0]})")
        if missing:
            notes.append(f"{path} has no {name}: initialised at random")
    return notes


def load_classifier_head(classifier, path: str, tensors=None) -> bool:
    """Assigns `classifier.*` of a BertForSequenceClassification to our
    classifier's output layer; False if the directory has none."""
    path = model_directory(path)
    tensors = read_weights(path) if tensors is None else tensors
    done, missing = _assign(
        _weights_by_path(classifier),
        CLASSIFIER_MAP,
        tensors,
        weight_files(path)[0],
        "classifier",
    )
    return not missing


# === Writing a directory ===
def export(
    out_dir: str,
    *,
    model_cfg: ModelConfig,
    backbone,
    vocab: list[str],
    do_lower_case: bool,
    pretrainer=None,
    classifier=None,
    labels=(),
    label_names=(),
) -> list[str]:
    """Writes a BERT directory transformers loads: `BertForPreTraining` (with
    `pretrainer`), `BertForSequenceClassification` (with `classifier`,
    `id2label`/`label2id` from `label_names` or `labels`), else
    `BertModel`. Files: config.json, model.safetensors (float32),
    vocab.txt, tokenizer_config.json, special_tokens_map.json. Returns the
    file names written.
    """
    tensors = {}
    prefix = "" if pretrainer is None and classifier is None else "bert."
    values = {w.path: np.asarray(w.numpy()) for w in backbone.weights}
    for ours, hf, how in tensor_map(model_cfg.num_layers) + POOLER_MAP:
        for name, value in to_hf(values[ours], hf, how).items():
            tensors[prefix + name] = value
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": model_cfg.vocabulary_size,
        "hidden_size": model_cfg.hidden_dim,
        "num_hidden_layers": model_cfg.num_layers,
        "num_attention_heads": model_cfg.num_heads,
        "intermediate_size": model_cfg.intermediate_dim,
        "hidden_act": ACTIVATION_NAMES[model_cfg.activation],
        "hidden_dropout_prob": model_cfg.dropout,
        "attention_probs_dropout_prob": model_cfg.dropout,
        "max_position_embeddings": model_cfg.max_sequence_length,
        "type_vocab_size": model_cfg.num_segments,
        "initializer_range": model_cfg.initializer_range,
        "layer_norm_eps": model_cfg.layer_norm_epsilon,
        "pad_token_id": vocab.index(features.PAD) if features.PAD in vocab else 0,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }
    if pretrainer is not None:
        config["architectures"] = ["BertForPreTraining"]
        head = _weights_by_path(pretrainer)
        for ours, hf, how in MLM_HEAD_MAP + NSP_HEAD_MAP:
            tensors.update(to_hf(np.asarray(head[ours].numpy()), hf, how))
    if classifier is not None:
        config["architectures"] = ["BertForSequenceClassification"]
        head = _weights_by_path(classifier)
        for ours, hf, how in CLASSIFIER_MAP:
            tensors.update(to_hf(np.asarray(head[ours].numpy()), hf, how))
        names = list(label_names) if len(label_names) == len(labels) else list(labels)
        config["id2label"] = {str(i): str(n) for i, n in enumerate(names)}
        config["label2id"] = {str(n): i for i, n in enumerate(names)}
        config["problem_type"] = "single_label_classification"
    fileio.makedirs(out_dir)
    safetensors.write(fileio.join(out_dir, WEIGHTS_FILE), tensors)
    fileio.write_atomic(fileio.join(out_dir, VOCAB_FILE), "\n".join(vocab) + "\n")
    specials = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    tokenizer_config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(do_lower_case),
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "model_max_length": model_cfg.max_sequence_length,
        **specials,
    }
    fileio.write_atomic(
        fileio.join(out_dir, TOKENIZER_CONFIG_FILE),
        json.dumps(tokenizer_config, indent=2),
    )
    fileio.write_atomic(
        fileio.join(out_dir, "special_tokens_map.json"), json.dumps(specials, indent=2)
    )
    # Last: a directory with config.json is what import recognises.
    fileio.write_atomic(fileio.join(out_dir, CONFIG_FILE), json.dumps(config, indent=2))
    return [
        CONFIG_FILE,
        WEIGHTS_FILE,
        VOCAB_FILE,
        TOKENIZER_CONFIG_FILE,
        "special_tokens_map.json",
    ]
