"""The one key table of the inspector: the App's and panes' BINDINGS, the command palette and
the help screen's key list are all generated from ``KEYS``.

Each entry is one action: its key(s) (Textual key names; empty for a palette-only action), the
action string the binding runs, the footer description, the palette title and help (no title:
not in the palette), the screens whose footer shows it (``footer_keys``: the footer shows the
keys of the screen in view, tui/widgets/footer.py), where the binding lives (``app``, or the pane
or widget that owns it), and the help row it is listed under (entries sharing a row label are one
row, whose text is the first entry's). Rows for keys no action here owns (the palette itself,
tab, the token grid's arrows) are entries with no action.

An analysis that brings its own pane (its registry entry's ``pane`` is "module:Class",
core/analyses/base.py) gets a tab after the built-in screens: ``added_panes()`` names them, keys 8
and 9 in registry order (later ones: the palette only), and ``all_keys()`` is ``KEYS`` with their
entries, which the app binds, the palette lists, the help shows and whose footers show every
screen's keys. With none registered, ``all_keys()`` is ``KEYS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from textual.actions import parse
from textual.binding import Binding, BindingType

TABS = ("tokens", "norms", "horizon", "outliers", "attention")  # the screens, keys 1..5
SCREENS = (*TABS, "compare", "figures")  # every screen's id (keys 1..7), as the footer names it
EVERY = SCREENS
FIRST_ADDED_KEY = 8  # the key of the first added pane; keys go up to 9


@dataclass(frozen=True)
class Key:
    keys: str  # Textual key names, comma separated ("" for palette-only actions)
    action: str  # the action string ("" for a help row only)
    description: str = ""  # the footer's word
    title: str = ""  # the palette's title ("" = not in the palette)
    help: str = ""  # the palette's help line
    display: str | None = None  # the key as the footer and palette show it
    screens: tuple[str, ...] = ()  # the screens whose footer shows it (() = no footer)
    where: str = "app"  # app | horizon | outliers | compare | figures (whose BINDINGS hold it)
    row: str = ""  # the help screen's row label ("" = not listed)
    row_text: str = ""  # the row's text (on the row's first entry)


KEYS: tuple[Key, ...] = (
    *(Key(str(n), f"show_tab('{tab}')", tab, f"Show {tab}", f"switch to the {tab} screen (key {n})",
          row="1..5", row_text="Tokens, Norms, Horizon, Outliers, Attention" if n == 1 else "")
      for n, tab in enumerate(TABS, start=1)),
    Key("6", "show_compare", "compare", "Show compare", "results directories side by side (6)", row="6",
        row_text="Compare: two or more --results side by side (table, overlaid figures)"),
    # Compare's n / N are Figures' n / N (next / previous figure); d (depth) toggles its x axis.
    Key("n", "app.compare_figure(1)", "next", "Next compare figure",
        "norm growth, sublayers, loss vs k, cosine, over models (n)", screens=("compare",), where="compare",
        row="n / N / d", row_text="compare: next / previous figure; d: x layer | relative depth"),
    Key("N", "app.compare_figure(-1)", "previous", "Previous compare figure", "(N)", screens=("compare",),
        where="compare", row="n / N / d"),
    Key("d", "app.compare_x", "x axis", "Toggle compare x axis", "layer / relative depth (d)", screens=("compare",),
        where="compare", row="n / N / d"),
    Key("7", "show_tab('figures')", "figures", "Show figures", "the seeds' figures as plots (7)", row="7",
        row_text="Figures: the seeds' eleven figures, one at a time"),
    Key("n", "next_figure(1)", "next", "", screens=("figures",), where="figures", row="n / N / w",
        row_text="figures: next / previous figure; w saves the figure shown (svg) to horizon-figures/"),
    Key("N", "next_figure(-1)", "previous", "", screens=("figures",), where="figures", row="n / N / w"),
    Key("w", "save_figure", "save", "Save figure", "the figure shown, as horizon figures draws it (w)",
        screens=("norms", "horizon", "compare", "figures"), row="n / N / w"),  # the screens with a plot
    Key("question_mark", "help", "help", "Help", "every metric and key (?)", screens=EVERY, row="?",
        row_text="this help"),
    Key("", "", row="ctrl+p", row_text="command palette (every action)"),
    Key("m", "cycle_metric", "metric", "Cycle token metric", "cosine, norm, Δloss, KL (m)", screens=("tokens",),
        row="m", row_text="cycle the token metric: cosine, norm, Δloss, KL"),
    Key("left_square_bracket", "layer(-1)", "layer-", "Layer down", "([)", "[", ("tokens", "outliers"), row="[ / ]",
        row_text="layer down / up"),
    Key("right_square_bracket", "layer(1)", "layer+", "Layer up", "(])", "]", ("tokens", "outliers"), row="[ / ]"),
    Key("l", "cycle_length", "length", "Cycle truncation length", "1, 5, 10 (l)", screens=("tokens", "outliers"),
        row="l", row_text="truncation length 1 → 5 → 10"),
    Key("comma", "k(-1)", "k-", "Horizon k down", "(,)", ",", ("tokens", "horizon"), row=", / .",
        row_text="horizon k down / up"),
    Key("full_stop", "k(1)", "k+", "Horizon k up", "(.)", ".", ("tokens", "horizon"), row=", / ."),
    Key("", "start_layer(-1)", title="Start layer down", help="horizon start layer"),
    Key("", "start_layer(1)", title="Start layer up", help="horizon start layer"),
    Key("s", "toggle_source", "source", "Toggle horizon source", "recursive / clean (s)", row="s / e / f",
        row_text="source recursive|clean, keep_embed, final window|full"),
    Key("e", "toggle_keep_embed", "keep embed", "Toggle keep_embed", "always add the embedding to the window (e)",
        row="s / e / f"),
    Key("f", "toggle_final", "final", "Toggle final readout", "window / full (f)", row="s / e / f"),
    Key("a", "toggle_ablation", "ablation", screens=("horizon",), where="horizon", row="a / x / < >",
        row_text="horizon: ablation zero|mean; layer × k matrix; its layer N down / up"),
    Key("x", "toggle_matrix", "layer x k", screens=("horizon",), where="horizon", row="a / x / < >"),
    Key("less_than_sign", "cell_layer(-1)", "layer-", display="<", where="horizon", row="a / x / < >"),
    Key("greater_than_sign", "cell_layer(1)", "layer+", display=">", where="horizon", row="a / x / < >"),
    Key("", "", row="←→↑↓ click", row_text="select a token (opens the detail pane); esc closes it"),
    Key("escape", "close_detail", "close", "Close detail pane", "(esc)", row="←→↑↓ click"),
    Key("", "", row="tab", row_text="focus next widget (sliders: ←/→, home/end)"),
    Key("c", "app.cycle_category", "category", "Cycle outlier category", "all, newline, full_stop, ... (c)",
        screens=("outliers",), where="outliers", row="c / o",
        row_text="outliers: cycle category filter / sort column; enter jumps to the token"),
    Key("o", "cycle_sort", "sort", screens=("outliers",), where="outliers", row="c / o"),
    Key("b", "toggle_bos", "BOS", "Toggle attention BOS", "with / without the BOS column (b)", screens=("attention",),
        row="b", row_text="attention: with / without the BOS column"),
    Key("p", "pick_prompt", "prompt", "Pick prompt", "search the prompts by text (p)", row="p",
        row_text="pick a prompt (search by text)"),
    Key("q", "quit", "quit", screens=EVERY, row="q", row_text="quit"),
)


def added_panes() -> list[tuple[str, str]]:
    """(key, analysis name) of each registered analysis with its own pane, in registry order; its tab's id is
    its name. The key is "" past 9; an analysis named as a built-in screen gets no tab (its id would clash)."""
    from horizon.core.analyses import REGISTRY

    names = [name for name, analysis in REGISTRY.items() if analysis.has_own_pane and name not in SCREENS]
    return [(str(number) if number <= 9 else "", name) for number, name in enumerate(names, start=FIRST_ADDED_KEY)]


def added_keys() -> tuple[Key, ...]:
    """The key table's entries of the added panes (``added_panes``): one tab key each, in the help's rows."""
    return tuple(Key(key, f"show_tab('{name}')", name, f"Show {name}",
                     f"the {name} analysis's screen" + (f" (key {key})" if key else ""),
                     row=key or name, row_text=f"{name.capitalize()}: the {name} analysis's own screen")
                 for key, name in added_panes())


def all_keys() -> tuple[Key, ...]:
    """``KEYS`` and the added panes' entries after them."""
    return KEYS + added_keys()


def bindings(where: str = "app") -> list[BindingType]:
    """The BINDINGS of the app (``where="app"``) or of one pane or widget; a binding some screen's
    footer shows is ``show``n, and the footer (tui/widgets/footer.py) keeps those of the screen in view."""
    return [Binding(key.keys, key.action, key.description, show=bool(key.screens), key_display=key.display)
            for key in KEYS if key.keys and key.action and key.where == where]


def footer_keys(screen: str) -> list[tuple[str, str]]:
    """(key, action) of every binding the footer shows on ``screen``, in table order."""
    added = tuple(name for _, name in added_panes())
    if screen not in SCREENS + added:
        raise ValueError(f"no screen {screen!r}")
    if screen in added:  # an added pane's footer: the keys every screen's shows
        return [(key.keys, key.action) for key in all_keys() if key.keys and key.action and key.screens == EVERY]
    return [(key.keys, key.action) for key in all_keys() if key.keys and key.action and screen in key.screens]


def key_of(action: str) -> str:
    """The key bound to ``action`` as the footer shows it (for the hints a pane prints itself)."""
    key = next(key for key in KEYS if key.action == action and key.keys)
    return key.display or key.keys


def help_rows() -> list[tuple[str, str]]:
    """(keys, text) of the help screen's key list, in table order, one row per row label."""
    rows: dict[str, str] = {}
    for key in all_keys():
        if key.row and key.row not in rows:
            rows[key.row] = key.row_text
    return list(rows.items())


def palette(app: Any) -> Iterator[tuple[str, str, Callable[[], Any]]]:
    """(title, help, callback) of every palette command; a callback calls the action's method at once."""
    for key in all_keys():
        if key.title:
            yield key.title, key.help, _caller(app, key.action)


def _caller(app: Any, action: str) -> Callable[[], Any]:
    namespace, name, params = parse(action)
    if namespace and namespace != "app":
        raise ValueError(f"palette actions run on the app: {action}")
    method = getattr(app, f"action_{name}")
    return lambda: method(*params)
