"""Hugging Face BERT import: parity with transformers' own outputs.

The fixtures under `hf_fixtures/` were written by transformers
(`save_pretrained`) with its outputs on fixed inputs; see
`scripts/make_hf_fixtures.py` (needs torch; these tests do not).
"""

import json
import os
import shutil
import struct

import numpy as np
import pytest

from configs.schema import ConfigError
from model import checkpoints
from model.bert_backbone import BertBackbone, load_pretrained_backbone
from model.bert_classifier import BertClassifier, mean_pool
from model.bert_pretrainer import BertPretrainer
from model.checkpoints import huggingface, safetensors

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_fixtures")
TOLERANCE = 1e-4  # max |diff| in float32, the bar
ALL = [
    "bert_model",
    "pretraining",
    "masked_lm",
    "sequence_classification",
    "sentence_transformers",
    "gelu_new",
    "relu",
    "bf16",
    "fp16",
    "sharded",
    "tokenizer_json_only",
]


def fixture(name):
    return os.path.join(FIXTURES, name)


def expected(name):
    return dict(np.load(os.path.join(fixture(name), "expected.npz")))


def inputs_of(exp):
    return {k: exp[k] for k in ("input_ids", "input_mask", "segment_ids")}


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float32) - b)))


def all_positions(exp):
    batch, length = exp["input_ids"].shape
    return np.tile(np.arange(length, dtype=np.int32), (batch, 1))


@pytest.mark.parametrize("name", ALL)
def test_encoder_matches_transformers(name):
    exp = expected(name)
    backbone = load_pretrained_backbone(fixture(name))
    out = backbone(inputs_of(exp))
    assert max_diff(out["sequence_output"], exp["sequence_output"]) <= TOLERANCE
    if "pooled_output" in exp:
        assert max_diff(out["pooled_output"], exp["pooled_output"]) <= TOLERANCE
    if "mean_pooled" in exp:
        pooled = mean_pool(out["sequence_output"], exp["input_mask"])
        assert max_diff(pooled, exp["mean_pooled"]) <= TOLERANCE


@pytest.mark.parametrize("name", ["pretraining", "masked_lm", "bf16", "sharded"])
def test_pretraining_heads_match_transformers(name):
    exp = expected(name)
    ckpt = checkpoints.inspect(fixture(name))
    pretrainer = BertPretrainer(BertBackbone.from_model_config(ckpt.model_config))
    notes = checkpoints.load_pretraining_heads(ckpt, pretrainer)
    out = pretrainer({**inputs_of(exp), "masked_lm_positions": all_positions(exp)})
    assert max_diff(out["mlm_logits"], exp["mlm_logits"]) <= TOLERANCE
    if "nsp_logits" in exp:
        assert max_diff(out["sentence_logits"], exp["nsp_logits"]) <= TOLERANCE
        assert notes == []
    else:  # BertForMaskedLM: no pooler, no NSP head, and says so
        assert any("no NSP head" in n for n in notes)
        assert any("no pooler" in n for n in notes)


def test_sequence_classification_head_matches_transformers():
    exp = expected("sequence_classification")
    ckpt = checkpoints.inspect(fixture("sequence_classification"))
    classifier = BertClassifier(
        BertBackbone.from_model_config(ckpt.model_config), num_classes=3
    )
    checkpoints.load_backbone(ckpt, classifier.backbone)
    assert huggingface.load_classifier_head(classifier, ckpt.path)
    assert max_diff(classifier(inputs_of(exp)), exp["logits"]) <= TOLERANCE


def test_the_activation_is_what_the_config_says():
    """The bar is not loose: the tanh GELU where the config says gelu (what
    keras-hub computes) misses it on the same weights."""
    exp = expected("bert_model")
    ckpt = checkpoints.inspect(fixture("bert_model"))
    assert ckpt.model_config.activation == "gelu"
    import dataclasses

    wrong = dataclasses.replace(ckpt.model_config, activation="gelu_approximate")
    backbone = BertBackbone.from_model_config(wrong)
    checkpoints.load_backbone(ckpt, backbone)
    diff = max_diff(backbone(inputs_of(exp))["sequence_output"], exp["sequence_output"])
    assert diff > 5 * TOLERANCE
    config = checkpoints.inspect(fixture("gelu_new")).model_config
    assert (config.activation, config.layer_norm_epsilon) == ("gelu_approximate", 1e-7)
    assert (config.num_segments, config.max_sequence_length) == (3, 40)
    assert checkpoints.inspect(fixture("relu")).model_config.activation == "relu"


def test_tokenizer_settings_come_from_the_checkpoint():
    bert = checkpoints.inspect(fixture("bert_model"))
    assert bert.vocab_path.endswith("vocab.txt") and bert.do_lower_case is True
    assert bert.pooling is None
    only_json = checkpoints.inspect(fixture("tokenizer_json_only"))
    assert only_json.vocab_path == ""  # no vocab.txt: tokens from tokenizer.json
    assert only_json.vocab == bert.vocab
    assert only_json.do_lower_case is False  # the cased tokenizer
    assert checkpoints.inspect(fixture("sentence_transformers")).pooling == "mean"


@pytest.mark.parametrize("name", ["bert_model", "tokenizer_json_only"])
def test_our_tokenizer_gives_the_checkpoints_ids(name):
    """Text -> ids with the checkpoint's vocabulary and casing, as the
    checkpoint's own (transformers') tokenizer wrote them."""
    from model.text_data import TextPacker

    ckpt = checkpoints.inspect(fixture(name))
    packer = TextPacker(ckpt.vocab, ckpt.do_lower_case, 32)
    with open(os.path.join(fixture(name), "tokens.json"), encoding="utf-8") as f:
        examples = json.load(f)
    packed = packer(np.array([e["text"] for e in examples]))
    for row, example in zip(np.asarray(packed["input_ids"]), examples):
        want = example["input_ids"]
        assert list(row[: len(want)]) == want, example["text"]


# === Bad input: one line naming the file and what is wrong ===
def copy_fixture(tmp_path, name="bert_model"):
    target = tmp_path / name
    shutil.copytree(fixture(name), target)
    return target


def refused(path):
    with pytest.raises(ConfigError) as e:
        checkpoints.load_backbone(
            checkpoints.inspect(str(path)),
            BertBackbone.from_model_config(checkpoints.inspect(str(path)).model_config),
        )
    message = str(e.value)
    assert "\n" not in message
    return message


def test_pytorch_bin_alone_says_how_to_get_safetensors(tmp_path):
    d = copy_fixture(tmp_path)
    os.remove(d / "model.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="pytorch_model.bin but no model.safetensors"):
        checkpoints.inspect(str(d))


@pytest.mark.parametrize(
    "model_type, match",
    [
        ("roberta", "model_type 'roberta'"),
        ("distilbert", "supported: Hugging Face BERT"),
    ],
)
def test_another_architecture_is_refused(tmp_path, model_type, match):
    d = copy_fixture(tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = model_type
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=match):
        checkpoints.inspect(str(d))


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("hidden_act", "silu", "hidden_act 'silu' is not supported"),
        ("position_embedding_type", "relative_key", "position_embedding_type"),
        ("hidden_size", 30, "hidden_dim must be divisible by num_heads"),
    ],
)
def test_a_config_we_cannot_honour_is_refused(tmp_path, key, value, match):
    d = copy_fixture(tmp_path)
    config = json.loads((d / "config.json").read_text())
    config[key] = value
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=match):
        checkpoints.inspect(str(d))


def test_shapes_that_disagree_with_the_config(tmp_path):
    d = copy_fixture(tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["intermediate_size"] = 48
    (d / "config.json").write_text(json.dumps(config))
    message = refused(d)
    assert "model.safetensors" in message and "intermediate.dense.weight" in message


def test_a_vocab_whose_size_differs_from_vocab_size(tmp_path):
    d = copy_fixture(tmp_path)
    with open(d / "vocab.txt", "a") as f:
        f.write("extra\n")
    with pytest.raises(
        ConfigError, match="97 tokens but .*config.json says vocab_size 96"
    ):
        checkpoints.inspect(str(d))


def test_a_cut_safetensors_file(tmp_path):
    d = copy_fixture(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "cut short" in refused(d)
    (d / "model.safetensors").write_bytes(data[:5])
    assert "cut short" in refused(d)


def test_a_header_that_lies_about_sizes(tmp_path):
    d = copy_fixture(tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    entry = header["embeddings.word_embeddings.weight"]
    entry["shape"] = [entry["shape"][0] * 2, entry["shape"][1]]
    text = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(
        struct.pack("<Q", len(text)) + text + data[8 + n :]
    )
    message = refused(d)
    assert "embeddings.word_embeddings.weight" in message and "offsets span" in message


def test_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match="holds no checkpoint; expected"):
        checkpoints.inspect(str(tmp_path))
    with pytest.raises(ConfigError, match="notes.txt is a file, not a checkpoint"):
        checkpoints.inspect(str(tmp_path / "notes.txt"))
    with pytest.raises(ConfigError, match="nothing does not exist; expected"):
        checkpoints.inspect(str(tmp_path / "nothing"))


def test_old_names_buffers_and_a_tied_decoder_load(tmp_path):
    """`LayerNorm.gamma/beta` (early uploads), an `embeddings.position_ids`
    buffer and a stored copy of the tied decoder, as real files have."""
    d = copy_fixture(tmp_path, "pretraining")
    tensors = safetensors.read(str(d / "model.safetensors"))
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in tensors.items()
    }
    renamed["bert.embeddings.position_ids"] = np.arange(64, dtype=np.int64)[None]
    renamed["cls.predictions.decoder.weight"] = tensors[
        "bert.embeddings.word_embeddings.weight"
    ]
    safetensors.write(str(d / "model.safetensors"), renamed)
    exp = expected("pretraining")
    ckpt = checkpoints.inspect(str(d))
    pretrainer = BertPretrainer(BertBackbone.from_model_config(ckpt.model_config))
    assert checkpoints.load_pretraining_heads(ckpt, pretrainer) == []
    out = pretrainer({**inputs_of(exp), "masked_lm_positions": all_positions(exp)})
    assert max_diff(out["mlm_logits"], exp["mlm_logits"]) <= TOLERANCE


def test_safetensors_round_trip_in_every_dtype(tmp_path):
    values = {
        "f32": np.random.RandomState(0).randn(3, 4).astype(np.float32),
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "i64": np.arange(5, dtype=np.int64),
    }
    path = str(tmp_path / "t.safetensors")
    safetensors.write(path, values)
    back = safetensors.read(path)
    np.testing.assert_array_equal(back["f32"], values["f32"])
    np.testing.assert_array_equal(back["f16"], values["f16"].astype(np.float32))
    assert back["f16"].dtype == np.float32 and back["i64"].dtype == np.int64
    # bf16 is float32's top half: the reader's upcast is exact.
    bf16 = (values["f32"].view(np.uint32) >> 16).astype(np.uint16)
    header = json.dumps(
        {"x": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 24]}}
    ).encode()
    (tmp_path / "b.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + bf16.tobytes()
    )
    got = safetensors.read(str(tmp_path / "b.safetensors"))["x"]
    np.testing.assert_array_equal(got, (bf16.astype(np.uint32) << 16).view(np.float32))
    assert np.max(np.abs(got - values["f32"])) < 0.01 * np.max(np.abs(values["f32"]))


def test_the_mapping_is_one_table_both_ways():
    """Export is the inverse of import, tensor for tensor."""
    tensors = huggingface.read_weights(fixture("pretraining"))
    entries = (
        huggingface.tensor_map(2)
        + huggingface.POOLER_MAP
        + huggingface.MLM_HEAD_MAP
        + huggingface.NSP_HEAD_MAP
    )
    back = {}
    for ours, hf, how in entries:
        back.update(huggingface.to_hf(huggingface.to_ours(tensors, hf, how), hf, how))
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)
