"""Learning a WordPiece vocabulary from a word -> count table.

Pure functions, no Beam. The learning itself is tensorflow-text's
`wordpiece_tokenizer_learner_lib` (pure Python; its input preparation and
`learn_with_thresh`, driven by our threshold search instead of its `learn`),
with what a BERT vocabulary needs on top of it:

* the reserved tokens exactly once, at the front (`[PAD]` = id 0), then
  `[unused0]` ... `[unusedN-1]`, then the learned tokens;
* every character of the alphabet and its `##` form, so that any word made
  of known characters tokenizes without `[UNK]`;
* exactly `vocab_size` tokens when the corpus has enough distinct pieces
  (fewer when it has not: the size reached at threshold 1). The learner
  keeps the substrings seen at least a threshold number of times, so only
  some sizes are reachable; we take the learner's vocabulary at the largest
  threshold that reaches the size (at most `slack_ratio` above it) and trim
  its least frequent learned tokens (never characters or reserved tokens);
* determinism: the table is put in a canonical order (count descending,
  then word) before learning, so the same counts give the same vocabulary
  however they were produced (1 worker or 100).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from configs import features
from configs.tokenization import SUFFIX_INDICATOR

# The learner's own defaults (`wordpiece_tokenizer_learner_lib.learn`).
DEFAULT_MAX_UNIQUE_CHARS = 1000
DEFAULT_NUM_ITERATIONS = 4
DEFAULT_MAX_INPUT_WORDS = 5_000_000
DEFAULT_SLACK_RATIO = 0.05


def _learner():
    """tensorflow-text's learner module. Imported on use: the package import
    loads TensorFlow, which flag checking does not need."""
    from tensorflow_text.tools.wordpiece_vocab import (
        wordpiece_tokenizer_learner_lib,
    )

    return wordpiece_tokenizer_learner_lib


class VocabError(ValueError):
    """A vocabulary cannot be learned from these counts with these settings."""


def unused_tokens(num_unused: int) -> list[str]:
    """`[unused0]` ... `[unused{num_unused-1}]` (google-research/bert's names)."""
    return [f"{features.UNUSED_PREFIX}{i}]" for i in range(num_unused)]


def control_tokens(reserved_tokens: Iterable[str], num_unused: int) -> list[str]:
    """Reserved then unused tokens, checked: the fixed head of the vocabulary.

    Raises VocabError when a required special token is missing, `[PAD]` is not
    first (padding is id 0 in every record) or a token repeats.
    """
    reserved = list(reserved_tokens)
    if num_unused < 0:
        raise VocabError(f"num_unused must be >= 0, got {num_unused}")
    missing = [t for t in features.REQUIRED_TOKENS if t not in reserved]
    if missing:
        raise VocabError(f"reserved tokens lack {', '.join(missing)}")
    if reserved[0] != features.PAD:
        raise VocabError(f"{features.PAD} must be the first reserved token (id 0)")
    control = reserved + unused_tokens(num_unused)
    seen = set()
    for token in control:
        if token in seen:
            raise VocabError(f"reserved token {token!r} appears twice")
        seen.add(token)
    return control


def min_vocab_size(num_control: int, alphabet_size: int = 1) -> int:
    """Smallest vocabulary holding the control tokens, each character c of
    the alphabet and its suffix form `##c`."""
    return num_control + 2 * alphabet_size


def canonical_counts(word_counts) -> list[tuple[str, int]]:
    """(word, count) pairs sorted by count descending, then word.

    Accepts a mapping or an iterable of pairs; pairs with the same word are
    summed. The order makes the learner's input independent of how the
    counts were produced.
    """
    items = word_counts.items() if isinstance(word_counts, Mapping) else word_counts
    merged: dict[str, int] = {}
    for word, count in items:
        merged[word] = merged.get(word, 0) + int(count)
    return sorted(
        ((w, c) for w, c in merged.items() if c > 0), key=lambda wc: (-wc[1], wc[0])
    )


def corpus_alphabet(
    counts: list[tuple[str, int]],
    control: list[str],
    *,
    max_word_length: int,
    max_unique_chars: int,
) -> list[str]:
    """The characters the learner keeps: the `max_unique_chars` most frequent
    characters of the words it accepts (its own selection functions)."""
    learner = _learner()
    accepted = learner.get_input_words(counts, control, max_word_length)
    return sorted(learner.get_allowed_chars(accepted, max_unique_chars))


def _learn_to_size(counts, alphabet, params) -> list[str]:
    """The learner's vocabulary at the largest frequency threshold whose
    vocabulary has at least `params.vocab_size` tokens (the smallest such
    vocabulary), or at threshold 1 when none reaches the size.

    This is `learner.learn` with a different search around the learner's own
    `learn_with_thresh`: `learn` returns the last vocabulary its linear
    bisection tried, often well *under* the target (it cannot overshoot and
    trim); this search bisects the threshold in log space (vocabulary size
    falls roughly geometrically with it, so fewer learner runs) and stops at
    the first vocabulary within `slack_ratio` *above* the target, which the
    caller trims to the exact size. Input preparation is the learner's own.
    """
    learner = _learner()
    accepted = learner.get_input_words(
        counts, params.reserved_tokens, params.max_token_length
    )
    filtered = learner.filter_input_words(
        accepted, set(alphabet), params.max_input_tokens
    )
    target = params.vocab_size
    # Invariant: size(lo) >= target > size(hi); threshold 0 and
    # max_count + 1 are virtual ends (every / no substring kept).
    lo, hi = 0, max(count for _, count in filtered) + 1
    over = under = None
    while hi - lo > 1:
        mid = round(math.sqrt(max(lo, 1) * hi))
        mid = min(max(mid, lo + 1), hi - 1)
        vocab = learner.learn_with_thresh(filtered, mid, params)
        if len(vocab) >= target:
            lo, over = mid, vocab
            if len(vocab) <= target * (1 + params.slack_ratio):
                break
        else:
            hi, under = mid, vocab
    # `under` is then the vocabulary at threshold 1: the most it can reach.
    return over if over is not None else under


@dataclasses.dataclass(frozen=True)
class LearnedVocab:
    """A learned vocabulary and how it was reached.

    Attributes:
        tokens: list[str], token i has id i.
        alphabet: list[str], the single characters in `tokens` (each also
            present as `##c`).
        learner_size: size the tensorflow-text learner returned.
        trimmed: least frequent learned tokens removed to fit `vocab_size`.
        added: alphabet tokens (c or ##c) the learner lacked and we added.
    """

    tokens: list[str]
    alphabet: list[str]
    learner_size: int
    trimmed: int
    added: int


def learn_vocab(
    word_counts,
    *,
    vocab_size: int,
    reserved_tokens: Iterable[str] = features.RESERVED_TOKENS,
    num_unused: int = 0,
    max_word_length: int = 50,
    max_unique_chars: int = DEFAULT_MAX_UNIQUE_CHARS,
    num_iterations: int = DEFAULT_NUM_ITERATIONS,
    max_input_words: int = DEFAULT_MAX_INPUT_WORDS,
    slack_ratio: float = DEFAULT_SLACK_RATIO,
) -> LearnedVocab:
    """Learns a WordPiece vocabulary of at most `vocab_size` tokens.

    Args:
        word_counts: {word: count} or iterable of (word, count); words are
            already normalized and pre-tokenized (see `pipelines.word_counts`).
        vocab_size: the most tokens in the result, control tokens included.
        reserved_tokens: special tokens, `[PAD]` first; must include
            `configs.features.REQUIRED_TOKENS`.
        num_unused: `[unusedN]` slots after the reserved tokens.
        max_word_length: the learner's `max_token_length` (characters).
        max_unique_chars: alphabet size cap; words with rarer characters are
            not learned from (their characters tokenize as `[UNK]`).
        num_iterations, max_input_words, slack_ratio: as the learner's
            `num_iterations`, `max_input_tokens`, `slack_ratio`.

    Returns:
        LearnedVocab. Raises VocabError for an empty table or when the
        control tokens plus the alphabet (with `##` forms) exceed vocab_size.
    """
    control = control_tokens(reserved_tokens, num_unused)
    counts = canonical_counts(word_counts)
    if not counts:
        raise VocabError("the corpus has no words to learn from")
    alphabet = corpus_alphabet(
        counts,
        control,
        max_word_length=max_word_length,
        max_unique_chars=max_unique_chars,
    )
    if not alphabet:
        raise VocabError(
            f"no word of at most {max_word_length} characters to learn from"
        )
    needed = min_vocab_size(len(control), len(alphabet))
    if needed > vocab_size:
        raise VocabError(
            f"vocab_size {vocab_size} cannot hold the {len(control)} reserved/"
            f"unused tokens plus the corpus alphabet of {len(alphabet)} "
            f"characters and their ## forms ({needed} tokens); raise "
            f"--vocab_size or lower --max_unique_chars"
        )

    learned = _learn_to_size(
        counts,
        alphabet,
        _learner().Params(
            upper_thresh=None,
            lower_thresh=1,
            num_iterations=num_iterations,
            max_input_tokens=max_input_words,
            max_token_length=max_word_length,
            max_unique_chars=max_unique_chars,
            vocab_size=vocab_size,
            slack_ratio=slack_ratio,
            include_joiner_token=True,
            joiner=SUFFIX_INDICATOR,
            reserved_tokens=control,
        ),
    )
    learner_size = len(learned)

    # The learner emits control tokens, then characters, then learned tokens
    # by count; keep that order, dropping anything that repeats a control
    # token (it should not) so each appears exactly once, at the front.
    control_set = set(control)
    body = [t for t in learned if t not in control_set]
    alphabet_tokens = [c for c in alphabet] + [SUFFIX_INDICATOR + c for c in alphabet]
    present = set(body)
    missing = [t for t in alphabet_tokens if t not in present]
    body.extend(missing)

    # Trim the least frequent learned tokens (the tail) if over size; the
    # alphabet is protected so nothing new becomes [UNK].
    protected = set(alphabet_tokens)
    excess = len(control) + len(body) - vocab_size
    trimmed = 0
    if excess > 0:
        kept_reversed = []
        for token in reversed(body):
            if trimmed < excess and token not in protected:
                trimmed += 1
                continue
            kept_reversed.append(token)
        body = kept_reversed[::-1]

    tokens = control + body
    assert len(tokens) == len(set(tokens)), "duplicate token in vocabulary"
    assert len(tokens) <= vocab_size
    return LearnedVocab(
        tokens=tokens,
        alphabet=alphabet,
        learner_size=learner_size,
        trimmed=trimmed,
        added=len(missing),
    )
