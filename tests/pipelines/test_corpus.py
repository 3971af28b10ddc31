"""ReadDocuments / DocumentSource: formats, bad input, split boundaries."""

import gzip
import json

import apache_beam as beam
import pytest
from apache_beam.io import source_test_utils
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import corpus

DOCS = [
    ["First doc line one.", "First doc line two."],
    ["Second doc, only line."],
    ["Third doc a.", "Third doc b.", "Third doc c."],
]


def _write_text(path, docs, blank="\n"):
    path.write_text(blank.join("\n".join(d) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def _run(transform):
    p = TestPipeline()
    out = p | transform
    return p, out


def _counter(result, name):
    got = result.metrics().query(
        MetricsFilter().with_namespace(corpus.NAMESPACE).with_name(name)
    )["counters"]
    return sum(c.committed for c in got)


def test_reads_text_gzip_and_jsonl(tmp_path):
    txt = _write_text(tmp_path / "a.txt", DOCS[:2])
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(DOCS[2]) + "\n")
    with open(tmp_path / "c.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"body": "J one.\n\nJ two."}) + "\n")
        f.write(json.dumps({"other": 1}) + "\n")
        f.write("{not json\n")
    p = TestPipeline()
    docs = p | corpus.ReadDocuments(
        file_patterns=f"{txt},{tmp_path}/*.gz,{tmp_path}/*.jsonl",
        text_field="body",
    )
    assert_that(
        docs | beam.MapTuple(lambda _id, lines: lines),
        equal_to(DOCS + [["J one.", "J two."]]),
    )
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, corpus.DOCUMENTS_READ) == 4
    assert _counter(result, corpus.RECORDS_UNPARSEABLE) == 1
    assert _counter(result, corpus.RECORDS_WITHOUT_TEXT) == 1


def test_doc_ids_are_path_and_offset(tmp_path):
    path = _write_text(tmp_path / "a.txt", DOCS[:2], blank="\n  \n\n")
    with TestPipeline() as p:
        ids = p | corpus.ReadDocuments(file_patterns=path) | beam.Keys()
        first_len = len("\n".join(DOCS[0]) + "\n\n  \n\n")
        assert_that(ids, equal_to([f"{path}:0", f"{path}:{first_len}"]))


def test_bad_bytes_and_long_lines_are_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(
        b"ok line.\nbad \xff\xfe bytes.\n" + b"x" * 300 + b"\nafter.\n\nnext doc.\n"
    )
    p = TestPipeline()
    docs = p | corpus.ReadDocuments(file_patterns=str(path), max_line_bytes=100)
    assert_that(
        docs | beam.Values(),
        equal_to([["ok line.", "bad \ufffd\ufffd bytes.", "after."], ["next doc."]]),
    )
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, corpus.LINES_UNDECODABLE) == 1
    assert _counter(result, corpus.LINES_TOO_LONG) == 1


def test_glob_matching_nothing_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="matches no file"):
        corpus.ReadDocuments(file_patterns=str(tmp_path / "nope-*.txt"))
    with pytest.raises(ValueError, match="matches no file"):
        corpus.expand_patterns(f"{tmp_path}/x.txt,{tmp_path}/y.txt")


@pytest.mark.parametrize("blank", ["\n", "\n\n\n", "\n \t\n"])
def test_split_ranges_read_every_document_once(tmp_path, blank):
    docs = [
        [f"doc {d} line {i} " + "w" * (d % 7) for i in range(d % 5 + 1)]
        for d in range(60)
    ]
    path = _write_text(tmp_path / "big.txt", docs, blank=blank)
    source = corpus.DocumentSource(path)
    expected = sorted(tuple(d) for d in docs)
    for bundle_size in (7, 50, 333):
        splits = list(source.split(desired_bundle_size=bundle_size))
        assert len(splits) > 3
        read = []
        for s in splits:
            read.extend(
                source_test_utils.read_from_source(
                    s.source, s.start_position, s.stop_position
                )
            )
        assert sorted(tuple(lines) for _, lines in read) == expected
        assert len({doc_id for doc_id, _ in read}) == len(docs)


def test_dynamic_split_at_fractions_is_consistent(tmp_path):
    path = _write_text(tmp_path / "s.txt", DOCS * 3)
    source = corpus.DocumentSource(path)
    (split,) = list(source.split(desired_bundle_size=10**9))
    source_test_utils.assert_split_at_fraction_exhaustive(
        split.source, split.start_position, split.stop_position
    )


def test_a_directory_as_input_is_one_line_suggesting_a_glob(tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(ValueError, match="is a directory; pass a glob"):
        corpus.expand_patterns(str(tmp_path))
    assert corpus.expand_patterns(f"{tmp_path}/*") == [str(tmp_path / "a.txt")]
