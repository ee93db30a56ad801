"""kedit: knowledge editing for Hugging Face causal language models.

Example:
    >>> import kedit
    >>> sorted(m.name for m in kedit.list_methods())[:2]
    ['alphaedit', 'ft']
"""
__version__ = "0.1.0"

from kedit.data.requests import EditRequest  # noqa: E402
from kedit.editor import Editor  # noqa: E402
from kedit.methods import get_method, list_methods, register_method  # noqa: E402
from kedit.models.loading import load_model  # noqa: E402

__all__ = ["EditRequest", "Editor", "load_model", "get_method", "list_methods", "register_method", "__version__"]
