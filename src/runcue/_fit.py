"""Pieces of the progress view that fit the width they are drawn at, for any terminal.

Each is a rich renderable that looks at the width it is given when drawn (rich imports
happen then, not here): a table that picks the richest of its layouts that fits whole, a
line of items that wraps between items but never inside one, and a progress bar that
keeps its figures and gives up the least useful of them before the bar gets too short.
Nothing here cuts a name or a number short, unless even the poorest layout is too wide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions, RenderResult
    from rich.measure import Measurement
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

__all__ = ["FittedTable", "PackedLine", "ProgressLine"]

MIN_BAR = 10  # the narrowest progress bar worth drawing


def _width(text: Text) -> int:
    """The widest line of ``text``, in terminal cells."""
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.plain.split("\n")), default=0)


class FittedTable:
    """Rows of cells under headers, drawn with the first of ``layouts`` that fits the width.

    :param headers: each column's key and header; a key in ``numeric`` is right-aligned.
    :param rows: a cell per column key, for every row (a row may hold more keys than a
        layout shows).
    :param layouts: column keys, richest first. When even the last is too wide, it is
        drawn anyway and only its first column (the names) is cut short, with an ellipsis.
    :param reserve: a width to keep for a column whatever its cells hold now.
    """

    def __init__(
        self,
        headers: Mapping[str, str],
        rows: Sequence[Mapping[str, Text]],
        layouts: Sequence[Sequence[str]],
        *,
        numeric: frozenset[str] = frozenset(),
        reserve: Mapping[str, int] | None = None,
    ) -> None:
        self.headers = headers
        self.rows = rows
        self.layouts = layouts
        self.numeric = numeric
        self.reserve = reserve or {}

    def column_width(self, key: str) -> int:
        """The width a column needs to show its header and every cell whole, and at least
        the width reserved for it (so that a cell whose text changes from one frame to the
        next does not make the layout jump)."""
        cells = [_width(row[key]) for row in self.rows]
        return max([len(self.headers[key]), self.reserve.get(key, 0), *cells])

    def layout_width(self, layout: Sequence[str], gap: int = 1) -> int:
        """The width of the table with these columns, ``gap`` spaces apart."""
        return sum(self.column_width(key) for key in layout) + gap * (len(layout) - 1)

    def layout_for(self, width: int) -> Sequence[str]:
        """The richest layout that fits in ``width`` cells (the poorest when none does)."""
        for layout in self.layouts:
            if self.layout_width(layout) <= width:
                return layout
        return self.layouts[-1]

    def table(self, layout: Sequence[str], gap: int = 1, width: int | None = None) -> Table:
        """The rich table of one layout, its columns ``gap`` (1 or 2) spaces apart; with a
        ``width`` it is too wide for, the first column's cells are cut to make it fit.
        """
        from rich.table import Table

        first = layout[0]
        room = None
        if width is not None and self.layout_width(layout, gap) > width:
            room = max(1, width - (self.layout_width(layout, gap) - self.column_width(first)))

        table = Table(
            box=None,
            padding=(0, 1),
            collapse_padding=gap == 1,
            pad_edge=False,
            show_edge=False,
            header_style="bold",
        )
        for key in layout:
            needed = self.column_width(key) if room is None or key != first else room
            table.add_column(
                self.headers[key][:needed],
                justify="right" if key in self.numeric else "left",
                no_wrap=True,
                width=needed,
            )
        for row in self.rows:
            cells = [row[key] for key in layout]
            if room is not None:
                cells[0] = cells[0].copy()
                cells[0].truncate(room, overflow="ellipsis")
            table.add_row(*cells)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        layout = self.layout_for(options.max_width)
        roomy = self.layout_width(layout, gap=2) <= options.max_width
        yield self.table(layout, gap=2 if roomy else 1, width=options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        from rich.measure import Measurement

        widths = [self.layout_width(layout) for layout in self.layouts]
        return Measurement(min(widths), max(widths)).clamp(max_width=options.max_width)


class PackedLine:
    """Items side by side, ``gap`` spaces apart, wrapped between items but never inside one."""

    def __init__(self, items: Sequence[Text], gap: int = 3) -> None:
        self.items = items
        self.gap = gap

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.text import Text

        width = options.max_width
        line = Text()
        used = 0
        for item in self.items:
            size = _width(item)
            if used and used + self.gap + size > width:
                yield line
                line, used = Text(), 0
            if used:
                line.append(" " * self.gap)
                used += self.gap
            line.append_text(item)
            used += size
        yield line


class ProgressLine:
    """A progress bar with figures beside it; the later figures go first when space is short.

    The first figure always shows; the others follow while the bar keeps at least
    :data:`MIN_BAR` cells.
    """

    def __init__(self, bar: ProgressBar, figures: Sequence[str]) -> None:
        self.bar = bar
        self.figures = figures

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        from rich.table import Table
        from rich.text import Text

        shown = list(self.figures[:1])
        for figure in self.figures[1:]:
            if len("  ".join([*shown, figure])) + 1 + MIN_BAR > options.max_width:
                break
            shown.append(figure)
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=1)
        grid.add_column(no_wrap=True)
        grid.add_row(self.bar, Text("  ".join(shown)))
        yield grid
