"""The pipeline, as one visible list of named stages.

    parse -> check -> graph -> (analyses, transforms: later issues) -> backend

`load` runs parse and check (every error in a spec raises here); `compile` hands the
checked program to a backend. Each stage is a module with one job.
"""
from __future__ import annotations

import os
from pathlib import Path

from .diagnostics import EinsumcError, Source, error
from .frontend.check import check
from .frontend.parse import parse
from .ir.program import Program

#: the stages of the pipeline, in order
STAGES = ("parse", "check", "graph", "emit")


def read_source(path_or_source: str | os.PathLike, name: str | None = None) -> Source:
    """A `Source` from a file path or from spec text."""
    if isinstance(path_or_source, os.PathLike) or (
            isinstance(path_or_source, str) and "\n" not in path_or_source
            and (path_or_source.endswith(".ein") or os.path.isfile(path_or_source))):
        path = Path(path_or_source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EinsumcError([error(f"cannot read {path}: {exc.strerror or exc}")]) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            src = Source(name or str(path), data.decode("utf-8", errors="replace"))
            raise EinsumcError([error("spec is not valid UTF-8", src.span(exc.start))], src) from None
        return Source(name or str(path), text)
    if isinstance(path_or_source, bytes):
        try:
            return Source(name or "<spec>", path_or_source.decode("utf-8"))
        except UnicodeDecodeError as exc:
            src = Source(name or "<spec>", path_or_source.decode("utf-8", errors="replace"))
            raise EinsumcError([error("spec is not valid UTF-8", src.span(exc.start))], src) from None
    return Source(name or "<spec>", str(path_or_source))


def load_source(source: Source) -> Program:
    if "\x00" in source.text:
        raise EinsumcError([error("spec contains a NUL character",
                                  source.span(source.text.index("\x00")))], source)
    module = parse(source.text, source.name)
    return check(module, source)


def load(path_or_source, name: str | None = None) -> Program:
    """Parse and check a spec (a path to a `.ein` file, or its text)."""
    return load_source(read_source(path_or_source, name))


def compile_program(program: Program, target: str = "numpy"):
    """A callable that runs the program on `target`."""
    from .backends import get_target
    try:
        t = get_target(target)
    except KeyError as exc:
        raise EinsumcError([error(exc.args[0])], program.source) from None
    return t.compile(program)


def emit_program(program: Program, target: str = "numpy") -> str:
    """The source text of a standalone module for `target`."""
    from .backends import get_target
    try:
        t = get_target(target)
    except KeyError as exc:
        raise EinsumcError([error(exc.args[0])], program.source) from None
    return t.emit(program)
