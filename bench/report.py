"""A Markdown page built section by section: what ``python -m bench`` writes."""

from __future__ import annotations

from collections.abc import Sequence


class Report:
    def __init__(self) -> None:
        self._parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self._parts.append(f"{'#' * level} {text}\n")

    def text(self, text: str) -> None:
        self._parts.append(text.strip() + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        lines = [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join("---" for _ in headers) + "|",
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
        ]
        self._parts.append("\n".join(lines) + "\n")

    def render(self) -> str:
        return "\n".join(self._parts)
