"""TokenizeDocuments: batched tensorflow-text tokenization, counters."""

import numpy as np
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from configs import features, tokenization
from pipelines import text, tokenize

DOCS = [
    ("a:0", ["The quick brown fox.", "It was not amused."]),
    ("a:50", ["\u0001\u0002", "Zebra \u65e5."]),  # a line without tokens; CJK -> [UNK]
    ("b:0", []),  # an empty document
    ("b:9", ["Boats sailed out."]),
]


def test_tokenize_documents_matches_tokenizer(vocab_file, vocab_tokens):
    tok = tokenization.build_tokenizer(vocab_tokens, True)

    def expected(lines):
        sentences = [s for s in tok.tokenize(lines).merge_dims(1, -1).to_list() if s]
        return (
            text.fingerprint(lines),
            [t for s in sentences for t in s],
            list(np.cumsum([len(s) for s in sentences])),
        )

    p = TestPipeline()
    out = (
        p
        | beam.Create(DOCS)
        | tokenize.TokenizeDocuments(vocab_path=vocab_file, do_lower_case=True)
        | beam.MapTuple(lambda fp, flat, ends: (fp, flat.tolist(), ends.tolist()))
    )
    assert_that(out, equal_to([expected(lines) for _, lines in DOCS if lines]))
    result = p.run()
    result.wait_until_finish()

    def counter(name):
        f = MetricsFilter().with_namespace(tokenize.NAMESPACE).with_name(name)
        return sum(c.committed for c in result.metrics().query(f)["counters"])

    assert counter(tokenize.DOCUMENTS_TOKENIZED) == 3
    assert counter(tokenize.DOCUMENTS_EMPTY) == 1
    assert counter(tokenize.SENTENCES_EMPTY) == 1
    assert counter(tokenize.TOKENS_UNKNOWN) >= 1  # the CJK character
    unk = features.special_token_ids(vocab_tokens)[features.UNK]
    assert counter(tokenize.TOKENS) > counter(tokenize.TOKENS_UNKNOWN) > 0
    assert unk == 1
