"""Generation fluency as the weighted bi/tri-gram entropy of ROME/MEMIT (spec/metrics.md §1, §3)."""
from __future__ import annotations

import collections
import math
from typing import Sequence

__all__ = ["ngram_entropy", "fluency"]

_NGRAM_WEIGHTS = ((2, 2 / 3), (3, 4 / 3))  # (n, weight): ROME's compute_n_gram_entropy defaults


def _words(text: str) -> list[str]:
    """NLTK Treebank word tokens of ``text``.

    ``nltk.word_tokenize`` needs the punkt data to split sentences first; this uses
    ``nltk.tokenize.NLTKWordTokenizer().tokenize`` on the whole text instead — the same Treebank word
    tokenizer that ``word_tokenize`` applies to each sentence, without the sentence splitting. The one
    visible difference: a period that ends an inner sentence stays attached to its word ("world." rather
    than "world", ".").
    """
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer().tokenize(text)


def _entropy_bits(counts: collections.Counter) -> float:
    total = sum(counts.values())
    if total == 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def ngram_entropy(text: str) -> float:
    """Weighted n-gram entropy of one text: ``mean(2/3·H2, 4/3·H3) = (2/3·H2 + 4/3·H3) / 2``.

    ``H_n`` is the Shannon entropy in bits of the frequency distribution of the text's word n-grams
    (spec/metrics.md §1, ROME ``compute_n_gram_entropy``). A text with fewer than n words has
    ``H_n = 0``, as in the reference code. Tokenization: see :func:`_words`.

    Example:
        >>> round(ngram_entropy("the cat the cat the"), 4)  # H2 = 1, H3 = 0.9183
        0.9455
    """
    words = _words(text)
    weighted = [w * _entropy_bits(collections.Counter(zip(*(words[i:] for i in range(n))))) for n, w in _NGRAM_WEIGHTS]
    return sum(weighted) / len(weighted)


def fluency(texts: Sequence[str]) -> float:
    """Mean :func:`ngram_entropy` over ``texts`` (papers report this ×100, ≈600 for healthy models).

    ROME scores the generated text *including* its prompt; pass ``prompt + continuation`` to match.

    Example:
        >>> round(fluency(["the cat the cat the", "word"]), 4)
        0.4728
    """
    texts = list(texts)
    if not texts:
        raise ValueError("fluency: 'texts' is empty; pass at least one generated text.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"fluency: texts[{i}] must be a string. Got {t!r} instead.")
    return sum(ngram_entropy(t) for t in texts) / len(texts)
