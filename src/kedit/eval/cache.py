"""Outputs of the unedited model, computed once and reused by every later evaluation.

Locality is scored against the ORIGINAL model even in sequential runs: EasyEdit's sequential mode
compared against the model it had already edited in place (EasyEdit issue #643; spec/metrics.md §3).
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from kedit.data.requests import EditRequest
from kedit.eval.scoring import _check_requests, argmax_tokens

__all__ = ["PreEditCache"]

_SUITES = ("counterfact", "zsre")


class PreEditCache:
    """Pre-edit argmax tokens on every locality pair, plus optional pre-edit metric dicts.

    Build it with :meth:`build` from the unedited model before the first edit; it never looks at a
    model again. ``results`` maps a suite name ("counterfact", "zsre") to that suite's pre-edit
    result dict when requested in :meth:`build`.

    Example:
        >>> from kedit.data.requests import EditRequest
        >>> from kedit.testing.tiny import tiny_model
        >>> model, tok = tiny_model("llama")
        >>> r = EditRequest("{} was born in", "Ada", "Paris", locality=(("Bob lives in", "Rome"),))
        >>> pre = PreEditCache.build(model, tok, [r])
        >>> len(pre.locality_argmax("Bob lives in", "Rome"))  # " Rome": 5 characters
        5
    """

    def __init__(self, locality: dict[tuple[str, str], list[int]], results: dict[str, dict] | None = None):
        self._locality = {tuple(k): list(v) for k, v in locality.items()}
        self.results: dict[str, dict[str, Any]] = dict(results or {})

    @classmethod
    def build(
        cls,
        model: nn.Module,
        tokenizer,
        requests: Sequence[EditRequest],
        *,
        suites: Sequence[str] = (),
        batch_size: int = 32,
    ) -> "PreEditCache":
        """Run the unedited ``model`` once over all locality pairs of ``requests``.

        Args:
            suites: also store these suites' pre-edit results ("counterfact" and/or "zsre") in ``results``.
            batch_size: sequences per forward pass; does not change the results.
        """
        requests = _check_requests(requests, "PreEditCache.build")
        unknown = [s for s in suites if s not in _SUITES]
        if unknown:
            raise ValueError(
                f"The 'suites' parameter of PreEditCache.build must be a subset of {list(_SUITES)}. Got {list(suites)!r} instead."
            )
        pairs = list(dict.fromkeys(pair for r in requests for pair in r.locality))
        tokens = argmax_tokens(model, tokenizer, pairs, batch_size=batch_size) if pairs else []
        results: dict[str, dict[str, Any]] = {}
        if "counterfact" in suites:
            from kedit.eval.counterfact import evaluate_counterfact

            results["counterfact"] = evaluate_counterfact(model, tokenizer, requests, batch_size=batch_size)
        if "zsre" in suites:
            from kedit.eval.zsre import evaluate_zsre

            results["zsre"] = evaluate_zsre(model, tokenizer, requests, batch_size=batch_size)
        return cls(dict(zip(pairs, tokens)), results)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (a resumed run reads it back with :meth:`from_json`)."""
        return {"locality": [[p, a, toks] for (p, a), toks in self._locality.items()], "results": self.results}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PreEditCache":
        return cls({(p, a): toks for p, a, toks in data["locality"]}, data.get("results"))

    def locality_argmax(self, prompt: str, answer: str) -> list[int]:
        """The unedited model's argmax tokens on ``prompt + " " + answer`` at the answer positions."""
        try:
            return list(self._locality[(prompt, answer)])
        except KeyError:
            raise KeyError(
                f"PreEditCache has no entry for locality pair ({prompt!r}, {answer!r}); build the cache from "
                "the same requests that are evaluated."
            ) from None

    def __contains__(self, pair: object) -> bool:
        return isinstance(pair, tuple) and pair in self._locality

    def __len__(self) -> int:
        return len(self._locality)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` restores it."""
        return {
            "locality": [[p, a, list(t)] for (p, a), t in self._locality.items()],
            "results": self.results,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreEditCache":
        unknown = sorted(set(d) - {"locality", "results"})
        if unknown:
            raise ValueError(f"PreEditCache.from_dict: unknown key(s) {unknown}; valid: ['locality', 'results'].")
        return cls({(p, a): t for p, a, t in d.get("locality", [])}, d.get("results"))
