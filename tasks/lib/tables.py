"""Plain-text tables for the terminal (``vivit runs``, ``vivit models``, ``vivit evaluate``): aligned columns, numbers
right-aligned with a fixed number of decimals, missing values as ``-``; no colours, so a pipe gets the same text."""
from __future__ import annotations

from typing import Any, Sequence


def cell(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if value != value else f"{value:.{digits}f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, *, headers: dict[str, str] | None = None,
          digits: int = 3, indent: str = "") -> str:
    """``rows`` as aligned text lines, ``columns`` (default: the first row's keys) in order."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    headers = headers or {}
    texts = [[cell(r.get(c), digits) for c in columns] for r in rows]
    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) or r.get(c) in (None, "")
                   for r in rows) for c in columns]
    names = [headers.get(c, c) for c in columns]
    widths = [max(len(n), *(len(t[i]) for t in texts)) for i, n in enumerate(names)]

    def line(values: Sequence[str]) -> str:
        return indent + "  ".join(v.rjust(w) if num else v.ljust(w)
                                  for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(names), *(line(t) for t in texts)])


def matrix(counts: Sequence[Sequence[int]], labels: Sequence[str], *, indent: str = "") -> str:
    """A confusion matrix: rows are the true classes, columns the predicted ones (numbered, the key below)."""
    k = len(labels)
    head = [f"{i + 1}" for i in range(k)]
    width = max(len(str(c)) for row in counts for c in row) if k else 1
    width = max(width, *(len(h) for h in head))
    corner = "true \\ predicted"
    name_w = max(len(corner), *(len(f"{i + 1} {label}") for i, label in enumerate(labels)))
    lines = [indent + corner.ljust(name_w) + "  " + "  ".join(h.rjust(width) for h in head)]
    for i, row in enumerate(counts):
        lines.append(indent + f"{i + 1} {labels[i]}".ljust(name_w) + "  " + "  ".join(str(c).rjust(width) for c in row))
    return "\n".join(lines)
