"""Diagnostics: source spans, messages with locations, and the one error type users see.

Every user-facing problem is a `Diagnostic` that points into the spec
(`file:line:col: error: message`, then the source line and a caret). Errors are collected
and raised together as one `EinsumcError`; warnings are returned alongside a valid program.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file: 1-based line/column of its start, 0-based offsets."""

    file: str
    line: int
    col: int
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Source:
    """A spec's text and the name it is reported under."""

    name: str
    text: str

    def span(self, start: int, end: int | None = None) -> Span:
        """The span of the characters [start, end) (`end` defaults to one character)."""
        start = max(0, min(start, len(self.text)))
        end = start + 1 if end is None else max(start, min(end, len(self.text)))
        line = self.text.count("\n", 0, start) + 1
        line_start = self.text.rfind("\n", 0, start) + 1
        return Span(self.name, line, start - line_start + 1, start, end)

    def line_text(self, line: int) -> str:
        lines = self.text.split("\n")
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message about the spec: severity is "error", "warning" or "note"."""

    severity: str
    message: str
    span: Span | None = None
    notes: tuple[Diagnostic, ...] = ()

    @property
    def file(self) -> str | None:
        return self.span.file if self.span else None

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def col(self) -> int | None:
        return self.span.col if self.span else None

    def render(self, source: Source | None = None) -> str:
        """`file:line:col: severity: message`, the source line and a caret under the span."""
        where = f"{self.span}: " if self.span else ""
        out = [f"{where}{self.severity}: {self.message}"]
        if self.span and source is not None:
            text = source.line_text(self.span.line)
            if text:
                shown = text[:200].replace("\t", " ")
                col = self.span.col
                width = max(1, min(self.span.end - self.span.start, len(text) - col + 1))
                if col <= len(shown) + 1:
                    out.append("  " + shown)
                    out.append("  " + " " * (col - 1) + "^" + "~" * (min(width, 80) - 1))
        for note in self.notes:
            out.append(note.render(source))
        return "\n".join(out)


@dataclass
class EinsumcError(Exception):
    """Raised for any problem in a spec or its inputs; `.diagnostics` says where and what."""

    diagnostics: list[Diagnostic]
    source: Source | None = None
    warnings: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(d.render(self.source) for d in self.diagnostics)

    def __reduce__(self):  # keep pickling (multiprocessing) working despite the dataclass init
        return (EinsumcError, (self.diagnostics, self.source, self.warnings))


def error(message: str, span: Span | None = None, *notes: Diagnostic) -> Diagnostic:
    return Diagnostic("error", message, span, tuple(notes))


def warning(message: str, span: Span | None = None, *notes: Diagnostic) -> Diagnostic:
    return Diagnostic("warning", message, span, tuple(notes))


def note(message: str, span: Span | None = None) -> Diagnostic:
    return Diagnostic("note", message, span)
