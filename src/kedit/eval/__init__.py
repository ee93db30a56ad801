"""Metric suites: CounterFact and zsRE/KnowEdit scoring, fluency, and the pre-edit cache.

Scores are fractions in [0, 1] (papers report ×100); definitions follow spec/metrics.md §1–§3.
"""
from kedit.eval.cache import PreEditCache
from kedit.eval.counterfact import evaluate_counterfact
from kedit.eval.fluency import fluency, ngram_entropy
from kedit.eval.scoring import argmax_tokens, candidate_nll, greedy_generate, token_accuracy
from kedit.eval.zsre import evaluate_zsre

__all__ = [
    "evaluate_counterfact",
    "evaluate_zsre",
    "PreEditCache",
    "candidate_nll",
    "token_accuracy",
    "argmax_tokens",
    "greedy_generate",
    "fluency",
    "ngram_entropy",
]
