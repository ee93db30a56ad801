"""Weight deltas: apply, revert, save/load (safetensors) and export an edited checkpoint.

Every weight change in kedit goes through :class:`Ledger` (DESIGN "Weights change only through the ledger").

Example:
    >>> from kedit.ledger import Ledger
    >>> from kedit.testing.tiny import tiny_model
    >>> Ledger(tiny_model("qwen2")[0]).history
    []
"""
from kedit.ledger.delta import EditSet, SparseRows
from kedit.ledger.export import export_checkpoint
from kedit.ledger.io import load_edit_set, save_edit_set
from kedit.ledger.ledger import Ledger, applied

__all__ = ["EditSet", "SparseRows", "Ledger", "applied", "save_edit_set", "load_edit_set", "export_checkpoint"]
