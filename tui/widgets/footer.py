"""The footer of the screen in view: Textual's ``Footer``, keeping the keys tui/keys.py declares for it.

Textual's footer shows every ``show`` binding of the focused widget and its ancestors, the app's
included, so each screen showed the token grid's keys. ``ScreenFooter`` keeps only the bindings
``footer_keys(view)`` names for the screen in view (the app sets ``view`` when the tab changes),
in the key table's order; the command palette's key stays at the right as before.
"""

from __future__ import annotations

from horizon.tui.keys import footer_keys
from textual.app import ComposeResult
from textual.reactive import reactive
from textual.widgets import Footer
from textual.widgets._footer import FooterKey


class ScreenFooter(Footer):
    """The footer, showing the keys of the screen ``view`` (a screen id of tui/keys.py's ``SCREENS``)."""

    view: reactive[str] = reactive("tokens", recompose=True)

    def compose(self) -> ComposeResult:
        wanted = footer_keys(self.view)
        keys: list[FooterKey] = []
        others = []  # the command palette's key
        for widget in super().compose():
            if isinstance(widget, FooterKey) and not widget.has_class("-command-palette"):
                if (widget.key, widget.action) in wanted:
                    keys.append(widget)
            else:
                others.append(widget)
        keys.sort(key=lambda widget: wanted.index((widget.key, widget.action)))
        self.styles.grid_size_columns = len(keys)  # Footer counted every binding it was given
        yield from keys
        yield from others
