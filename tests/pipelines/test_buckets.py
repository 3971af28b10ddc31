"""Buckets through spill files: the file format, the hash-range plan, and
`CreateSentencePairs` giving the same instances whatever the spill and
group sizes (equal to pairing each bucket in memory)."""

import random
import typing

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from configs import features
from pipelines import buckets, sentence_pairs


def _docs(n, seed=0, dtype=np.uint16, max_sentences=8):
    """`n` random documents `(fingerprint, flat, ends)`."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        ends = np.cumsum(
            [rng.randint(1, 12) for _ in range(rng.randint(1, max_sentences))]
        )
        flat = np.array([rng.randrange(5, 60000) for _ in range(ends[-1])], dtype)
        docs.append((rng.getrandbits(64), flat, ends.astype(np.int32)))
    return docs


def _spill(tmp_path, docs, seed, name="a.spill"):
    spill, duplicates = buckets.write_spill(
        str(tmp_path / name),
        [(buckets.bucket_hash(seed, fp), fp, flat, ends) for fp, flat, ends in docs],
    )
    assert duplicates == len(docs) - len({fp for fp, _, _ in docs})
    return spill


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_spill_round_trip_in_hash_order(tmp_path, dtype):
    docs = _docs(300, dtype=dtype)
    spill = _spill(tmp_path, docs, seed=5)
    assert (spill.documents, spill.tokens) == (300, sum(len(f) for _, f, _ in docs))
    back = list(buckets.read_documents(spill.path, 0, spill.index_offset))
    hashes = [buckets.bucket_hash(5, fp) for fp, _, _ in back]
    assert hashes == sorted(hashes)
    want = {fp: (flat, ends) for fp, flat, ends in docs}
    assert len(back) == len(want)
    for fp, flat, ends in back:
        assert flat.dtype == dtype
        np.testing.assert_array_equal(flat, want[fp][0])
        np.testing.assert_array_equal(ends, want[fp][1])


@pytest.mark.parametrize(
    "bucket_size, group_tokens", [(2, 1), (4, 50), (16, 1000), (64, 10**9)]
)
def test_group_ranges_cover_every_document_once_in_its_group(
    tmp_path, bucket_size, group_tokens
):
    seed = 11
    docs = _docs(500, seed=1)
    spills = [
        _spill(tmp_path, docs[i : i + 170], seed, f"{i}.spill")
        for i in range(0, 500, 170)
    ]
    plan = buckets.make_plan(
        500, sum(s.tokens for s in spills), bucket_size, group_tokens
    )
    assert plan.num_buckets == -(-500 // bucket_size)
    assert plan.num_groups * plan.buckets_per_group >= plan.num_buckets
    seen = []
    for spill in spills:
        last_hi = 0
        for group, lo, hi in buckets.group_ranges(spill, plan):
            assert 0 <= group < plan.num_groups and last_hi == lo < hi
            last_hi = hi
            for fp, _, _ in buckets.read_documents(spill.path, lo, hi):
                b = buckets.bucket_of(buckets.bucket_hash(seed, fp), plan.num_buckets)
                assert b // plan.buckets_per_group == group
                seen.append(fp)
        assert last_hi == spill.index_offset  # the ranges tile the body
    assert sorted(seen) == sorted(fp for fp, _, _ in docs)


def test_buckets_are_hash_ranges_of_about_bucket_size():
    rng = random.Random(3)
    n, size = 20_000, 64
    num_buckets = -(-n // size)
    counts = np.zeros(num_buckets, int)
    for _ in range(n):
        h = buckets.bucket_hash(9, rng.getrandbits(64))
        b = buckets.bucket_of(h, num_buckets)
        assert h * num_buckets // 2**64 == b
        counts[b] += 1
    assert counts.sum() == n and abs(counts.mean() - size) < 1
    # Poisson(64): a bucket of under 25 or over 120 is a 1e-8 event.
    assert counts.min() > 25 and counts.max() < 120


def test_plan_groups_whole_buckets_of_about_group_tokens():
    plan = buckets.make_plan(
        documents=10_000, tokens=2_500_000, bucket_size=64, group_tokens=100_000
    )
    assert plan.num_buckets == 157
    per_bucket = 2_500_000 // 157
    assert plan.buckets_per_group == 100_000 // per_bucket
    assert plan.num_groups == -(-157 // plan.buckets_per_group)
    tiny = buckets.make_plan(documents=0, tokens=0, bucket_size=64, group_tokens=1)
    assert tiny == buckets.Plan(1, 1, 1)


def test_cut_spill_is_one_clear_error(tmp_path):
    spill = _spill(tmp_path, _docs(20), seed=1)
    with open(spill.path, "r+b") as f:
        f.truncate(spill.index_offset // 2)
    with pytest.raises(IOError, match="spill file cut short"):
        list(buckets.read_documents(spill.path, 0, spill.index_offset))


def _canonical(batch):
    """An `InstanceBatch` as hashable rows (batches may split differently)."""
    return [
        (
            tuple(batch.input_ids[r, : batch.lengths[r]].tolist()),
            int(batch.num_a[r]),
            int(batch.labels[r]),
        )
        for r in range(len(batch.lengths))
    ]


@pytest.fixture
def pair_params(vocab_tokens):
    ids = features.special_token_ids(vocab_tokens)
    return dict(
        special_ids={features.CLS: ids[features.CLS], features.SEP: ids[features.SEP]},
        max_seq_length=24,
        short_seq_prob=0.1,
        sentence_task="nsp",
        dupe_factor=2,
        seed=4,
    )


def _in_memory(docs, params, bucket_size):
    """Each bucket paired on its own, straight from the documents."""
    fn = sentence_pairs._PairBucketFn(**dict(params))
    fn.setup()
    num_buckets = max(1, -(-len(docs) // bucket_size))
    rows, seeds = [], []
    for bucket in buckets.split_buckets(docs, params["seed"], num_buckets):
        for batch in fn.process(bucket):
            rows += _canonical(batch)
            seeds.append(hex(batch.mask_seed))
    return sorted(rows), sorted(seeds)


@pytest.mark.parametrize(
    "spill_tokens, group_tokens", [(40, 30), (10**6, 10**9), (1, 1)]
)
def test_pairs_do_not_depend_on_spill_or_group_size(
    tmp_path, pair_params, spill_tokens, group_tokens
):
    docs = _docs(120, seed=2)
    bucket_size = 8
    want_rows, want_seeds = _in_memory(docs, pair_params, bucket_size)
    assert len(want_rows) > 100
    with TestPipeline() as p:
        batches = (
            p
            # By index: Create would infer a VarIntCoder for the 64-bit
            # fingerprints; the tokenizer's output is pickled, like Any.
            | beam.Create(range(len(docs)))
            | beam.Map(lambda i: docs[i]).with_output_types(typing.Any)
            | sentence_pairs.CreateSentencePairs(
                bucket_size=bucket_size,
                temp_dir=str(tmp_path / "temp"),
                spill_tokens=spill_tokens,
                group_tokens=group_tokens,
                **pair_params,
            )
        )
        rows = batches | "Rows" >> beam.FlatMap(_canonical)
        seeds = batches | "Seeds" >> beam.Map(lambda b: hex(b.mask_seed))
        assert_that(rows, equal_to(want_rows), label="SameRows")
        assert_that(seeds, equal_to(want_seeds), label="SameMaskSeeds")


def test_spill_keeps_one_copy_of_each_fingerprint(tmp_path):
    docs = _docs(50, seed=6)
    spill = _spill(tmp_path, docs * 3 + docs[:7], seed=2)
    assert spill.documents == 50
    back = list(buckets.read_documents(spill.path, 0, spill.index_offset))
    assert sorted(fp for fp, _, _ in back) == sorted(fp for fp, _, _ in docs)


def test_duplicates_in_a_bucket_pair_like_one_copy(pair_params):
    docs = _docs(10, seed=8)
    fn = sentence_pairs._PairBucketFn(**dict(pair_params))
    fn.setup()
    once = [r for b in fn.process((0, docs)) for r in _canonical(b)]
    copied = [r for b in fn.process((0, docs + docs[::2] * 5)) for r in _canonical(b)]
    assert copied == once and len(once) > 10
