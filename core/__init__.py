"""horizon's engine: model loading, hooked capture, patching, truncation and metrics.

Nothing in here knows about the terminal UI; `horizon.tui` builds on it.
"""

from horizon.core.errors import HorizonError

__all__ = ["HorizonError"]
