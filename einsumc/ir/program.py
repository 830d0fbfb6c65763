"""A checked cascade: declarations, Einsums with resolved names, and per-tensor facts.

`Program` is what every stage after the checker consumes. It is immutable; derived
facts (`tensors`) are computed once by the checker and do not take part in equality.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..diagnostics import Diagnostic, Source
from .nodes import Einsum, ParamDecl, RankDecl, Stop, TensorDecl

DTYPES = ("f16", "bf16", "f32", "f64")


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """What the checker learned about one tensor.

    `axes` are the rank variables of its axes (the declaration's, or its defining LHS's);
    `iter_axis` is the position of its iterative axis (recurrence tensors only).
    """

    name: str
    kind: str  # "input" | "output" | "temp"
    axes: tuple[str, ...]
    dtype: str = "f32"
    iter_axis: int | None = None
    defined_by: tuple[int, ...] = ()  # indices into Program.einsums

    @property
    def iter_var(self) -> str | None:
        return None if self.iter_axis is None else self.axes[self.iter_axis]


@dataclass(frozen=True, slots=True)
class Program:
    """A checked cascade, ready for analyses, transforms and backends."""

    ranks: tuple[RankDecl, ...]
    params: tuple[ParamDecl, ...]
    inputs: tuple[TensorDecl, ...]
    outputs: tuple[TensorDecl, ...]
    einsums: tuple[Einsum, ...]
    stops: tuple[Stop, ...] = ()
    tensors: dict[str, TensorInfo] = field(default_factory=dict, compare=False)
    source: Source | None = field(default=None, compare=False, repr=False)
    warnings: tuple[Diagnostic, ...] = field(default=(), compare=False, repr=False)

    def rank(self, name: str) -> RankDecl:
        return next(r for r in self.ranks if r.name == name)

    def rank_of_var(self, var: str) -> RankDecl:
        return next(r for r in self.ranks if r.var == var)

    @property
    def runtime_params(self) -> tuple[str, ...]:
        """Params without a value: keyword arguments of the compiled program."""
        return tuple(p.name for p in self.params if p.value is None)

    def compile(self, target: str = "numpy", opt: bool = False, transform: str | None = None):
        """A callable that runs this cascade on `target` (see `einsumc.backends`), after
        `transform` (a chain such as "partition:M=64,online") or every legal transform
        (`opt=True`)."""
        from ..driver import compile_program
        return compile_program(self.transformed(opt, transform), target)

    def transformed(self, opt: bool = False, transform: str | None = None) -> "Program":
        """This cascade after a chain of transforms and/or `--opt` (see einsumc.transforms)."""
        from ..transforms import apply, optimize
        prog = self
        if transform:
            prog = apply(prog, transform)
        if opt:
            prog = optimize(prog)[0]
        return prog

    def emit(self, target: str = "numpy", opt: bool = False, transform: str | None = None) -> str:
        """Source of a standalone module computing this cascade on `target`."""
        from ..driver import emit_program
        return emit_program(self.transformed(opt, transform), target)

    def graph(self):
        """The dataflow graph of Einsums and tensors (`einsumc.ir.graph.DataflowGraph`)."""
        from .graph import build_graph
        return build_graph(self)

    def analyze(self, rank: str | None = None, shapes: dict[str, int] | None = None,
                capacity: int | None = None):
        """Pass counts, buffer bounds, traffic and op counts (`einsumc.analysis.Analysis`)."""
        from ..analysis import analyze
        return analyze(self, rank=rank, shapes=shapes, capacity=capacity)

    def to_source(self) -> str:
        """The program printed back as valid `.ein` text."""
        from .printer import print_program
        return print_program(self)

    @property
    def iterative_vars(self) -> tuple[str, ...]:
        seen: list[str] = []
        for e in self.einsums:
            if e.kind == "recur" and e.iter_var not in seen:
                seen.append(e.iter_var)
        return tuple(seen)
