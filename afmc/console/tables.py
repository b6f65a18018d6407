"""Tables that fit an 80-column terminal without cutting a name or a number.

Layer names lose the dotted prefix most of them share (a note says which), name
columns wrap (folding a name only where it is longer than the column), and number
columns never break (their headers wrap between words). A FittedTable too wide for the
terminal prints as several tables of fewer columns, each repeating the name column; the
full data is always in the command's --json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markup import escape
from rich.table import Table
from rich.text import Text

MIN_PREFIX = 4  # a shorter shared prefix is not worth a note
TEXT_WIDTH = 30  # the width a text column counts with when the columns are spread


@dataclass(frozen=True)
class LayerNames:
    """Layer names as a table shows them: without `prefix` where they start with it."""

    prefix: str = ""

    def show(self, name: str) -> str:
        """The name as shown (markup-escaped): its remainder after the prefix, or whole."""
        short = name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name
        return escape(short)

    @property
    def notes(self) -> list[str]:
        """The sentence saying which prefix the names lost (none without one)."""
        return [f"layer names: the prefix {self.prefix} is left out"] if self.prefix else []


def layer_names(names: Sequence[str]) -> LayerNames:
    """The dotted prefix (ending in '.') that saves the most characters over at least half
    of `names` (and two), when the shortened names stay distinct; else no prefix."""
    counts: Counter[str] = Counter()
    for name in set(names):
        parts = name.split(".")[:-1]
        counts.update(".".join(parts[:end]) + "." for end in range(1, len(parts) + 1))
    needed = max(2, (len(set(names)) + 1) // 2)
    best = max((prefix for prefix, count in counts.items()
                if count >= needed and len(prefix) >= MIN_PREFIX),
               key=lambda prefix: (len(prefix) * counts[prefix], len(prefix)), default="")
    shown = LayerNames(best)
    distinct = {shown.show(name) for name in set(names)}
    return shown if len(distinct) == len(set(names)) else LayerNames()


@dataclass(frozen=True)
class Column:
    """A column of a FittedTable. kind "name": folds a name longer than the column; "number":
    never broken nor cut, as wide as its widest value (the header wraps between words);
    "text": wraps between words."""

    header: str
    kind: Literal["name", "number", "text"] = "number"
    justify: Literal["left", "right"] = "right"

    def add_to(self, table: Table, values: Sequence[str] = (), text_width: int | None = None
               ) -> None:
        """Add this column to `table`; `values` (its cells) set a number column's width,
        `text_width` caps a text column's."""
        header = Text(self.header, no_wrap=False, overflow="fold")
        if self.kind != "number":
            table.add_column(header, justify=self.justify, no_wrap=False,
                             overflow="fold" if self.kind == "name" else "ellipsis",
                             max_width=text_width if self.kind == "text" else None)
            return
        widest = max((Text.from_markup(value).cell_len for value in values), default=0)
        table.add_column(header, justify=self.justify, no_wrap=True,
                         max_width=max(widest, *map(len, self.header.split()))
                         if values else None)


@dataclass
class FittedTable:
    """Rows (None: a section line) shown as one table when it fits the width, else as
    several tables of the same rows, each with the first `keys` columns and as many of
    the others, in order, as fit (a text column counting TEXT_WIDTH at most; a last table
    gets two of them when it can); the title goes on the first; the notes print below
    the last, at the full width."""

    columns: Sequence[Column]
    rows: Sequence[Sequence[str] | None]
    title: str | None = None
    notes: Sequence[str] = ()
    keys: int = 1

    def _table(self, indexes: Sequence[int], title: str | None,
               text_width: int | None = None) -> Table:
        table = Table(title=title, show_edge=False)
        rows = [row for row in self.rows if row is not None]
        for index in indexes:
            self.columns[index].add_to(table, [row[index] for row in rows], text_width)
        for row in self.rows:
            if row is None:
                table.add_section()
            else:
                table.add_row(*(row[index] for index in indexes))
        return table

    def tables(self, console: Console, width: int) -> list[Table]:
        """The tables that show every column within `width`, none of them squeezed."""
        keys = list(range(self.keys))
        groups: list[list[int]] = [list(keys)]
        for index in range(self.keys, len(self.columns)):
            trial = self._table([*groups[-1], index], None, TEXT_WIDTH)
            if len(groups[-1]) > self.keys and _widest(trial, console) > width:
                groups.append(list(keys))
            groups[-1].append(index)
        while len(groups) > 1 and len(groups[-1]) - self.keys < 2 < len(groups[-2]) - self.keys:
            groups[-1].insert(self.keys, groups[-2].pop())  # no one-column continuation
        return [self._table(group, self.title if at == 0 else
                            (f"{self.title} (continued)" if self.title else None))
                for at, group in enumerate(groups)]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.tables(console, options.max_width)
        for note in self.notes:
            yield Text(note, style="dim")


def _widest(table: Table, console: Console) -> int:
    """The width `table` takes when nothing in it wraps."""
    return table.__rich_measure__(console, console.options.update(width=10**6)).maximum
