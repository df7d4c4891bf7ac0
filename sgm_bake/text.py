"""How numbers and tables are printed: one helper for every command, so sizes and counts read
the same everywhere (`plan`, `inspect`, `eval`, `profile`, `push --dry-run`) and a tiny model
shows `1.2M parameters`, not `0.00B`.

rich would draw tables, but it is not a dependency of huggingface_hub (only of its optional
CLI extras), and aligned columns of plain text are all a terminal, a log file or a CI job
needs: a few lines here avoid a dependency.
"""

from __future__ import annotations

from collections.abc import Sequence


def format_bytes(count: float) -> str:
    """Bytes in binary units with about three significant figures (`512 B`, `13.5 GiB`)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            if unit == "B" or abs(count) >= 100:
                return f"{count:.0f} {unit}"
            return f"{count:.1f} {unit}" if abs(count) >= 10 else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def format_count(count: float) -> str:
    """A count in decimal units with about three significant figures, as model sizes are
    quoted (`950`, `1.20K`, `7.06B`)."""
    for unit in ("", "K", "M", "B"):
        if abs(count) < 1000 or unit == "B":
            if unit == "":
                return f"{count:,.0f}"
            if abs(count) >= 100:
                return f"{count:.0f}{unit}"
            return f"{count:.1f}{unit}" if abs(count) >= 10 else f"{count:.2f}{unit}"
        count /= 1000
    raise AssertionError("unreachable")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], gap: int = 2) -> list[str]:
    """Rows as aligned text lines under a header line: a column whose every cell (the header
    aside) reads as a number or a size is right-aligned, any other is left-aligned. The last
    column is not padded, so no line ends in spaces."""
    cells = [[str(cell) for cell in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"a row has {len(row)} cells for {len(headers)} columns")
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [bool(cells) and all(_numeric(row[i]) for row in cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = []
        for index, value in enumerate(values):
            last = index == len(values) - 1
            if numeric[index]:
                parts.append(value.rjust(widths[index]))
            else:
                parts.append(value if last else value.ljust(widths[index]))
        return (" " * gap).join(parts).rstrip()

    return [line(list(headers)), *(line(row) for row in cells)]


def _numeric(text: str) -> bool:
    """Whether a cell is a figure: digits with separators, a sign, a unit or a percent, or '-'."""
    if text == "-":
        return True
    head = text.split(" ")[0].rstrip("%KMBx")
    return bool(head) and head.replace(",", "").replace(".", "").lstrip("+-").isdigit()
