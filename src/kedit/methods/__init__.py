"""Method presets; importing this package registers every built-in preset."""
from kedit.methods import alphaedit, ft, lyaplock, lyaplock_hosts, memit, prune, rect, rome  # noqa: F401  (registration side effects)
from kedit.methods import anyedit, muke, nake, unke  # noqa: F401  (long-form presets)
from kedit.methods import critical_path  # noqa: F401  (critical-path contrastive editing, PAC)
from kedit.methods.registry import get_method, list_methods, register_method

__all__ = ["get_method", "list_methods", "register_method"]
