"""Tables as text: one renderer for the aligned tables commands print and the markdown tables reports write.

:func:`render_table` lays out cells that are already strings; :func:`records_table` first formats
dict records column by column, which is what the terminal tables of ``rank`` and ``convert`` print.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

Column = tuple[str, str, str]  # (record key, header, format spec)


def render_table(header: Sequence[object], rows: Iterable[Sequence[object]], *, markdown: bool = False) -> str:
    """Aligned columns (the first left-aligned, the rest right-aligned, two spaces apart), or a markdown table.

    A row's cells are shown with ``str``; a row must have as many cells as the header.
    """
    cells = [[str(c) for c in header]]
    for row in rows:
        cells.append([str(c) for c in row])
        if len(cells[-1]) != len(header):
            raise ValueError(f"a table row has {len(cells[-1])} cells for {len(header)} columns: {cells[-1]}")
    if markdown:
        rule = "|" + "---|" * len(header)
        return "\n".join(["| " + " | ".join(cells[0]) + " |", rule, *("| " + " | ".join(r) + " |" for r in cells[1:])])
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))) for line in cells
    )


def records_table(records: Iterable[Mapping[str, object]], columns: Sequence[Column], *, markdown: bool = False) -> str:
    """:func:`render_table` of ``records``: each column's key formatted with its spec, None shown as '-'."""
    rows = (["-" if r[key] is None else format(r[key], spec) for key, _, spec in columns] for r in records)
    return render_table([header for _, header, _ in columns], rows, markdown=markdown)
