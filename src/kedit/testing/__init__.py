"""Testing helpers shipped with kedit: tiny models and the conformance battery (STYLE.md S1)."""
from kedit.testing.checks import check_method, iter_checks
from kedit.testing.tiny import TINY_FAMILIES, tiny_model, tiny_tokenizer

__all__ = ["check_method", "iter_checks", "TINY_FAMILIES", "tiny_model", "tiny_tokenizer"]
