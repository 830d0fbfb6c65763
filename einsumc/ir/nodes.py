"""The IR of a cascade: immutable nodes that keep their source spans.

The same node types serve as the AST (names unresolved: `Name`) and as the checked IR
(names resolved into `Var`, `Extent`, `Param`, `Scalar`). Spans never take part in
equality, so two programs that differ only in layout compare equal (the printer
round-trip relies on this). Edit with `dataclasses.replace`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Union

from ..diagnostics import Span

_SPAN = field(default=None, compare=False, repr=False)


# ----------------------------------------------------------------------------- expressions
@dataclass(frozen=True, slots=True)
class Num:
    """A numeric literal (`inf` is `Num(float('inf'))`)."""

    value: float
    text: str = field(default="", compare=False)
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Name:
    """An identifier not yet resolved by the checker."""

    name: str
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Var:
    """A rank variable (`m` of rank `M`), used as an index or as a value."""

    name: str
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Extent:
    """A rank's extent used as a value or index (`M1` in `RD[M1, p]`, `E` in `sqrt(E)`)."""

    name: str
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Param:
    """A scalar parameter: a constant (declared with a value) or a run-time argument."""

    name: str
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Access:
    """A read of a tensor at index expressions: `K[e, m1*M0 + m0]`; a scalar has no indices."""

    tensor: str
    indices: tuple[Expr, ...]
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class BinOp:
    """`+ - * / // %` and comparisons `< <= == != >= >` and `and`/`or`."""

    op: str
    left: Expr
    right: Expr
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Unary:
    """Unary minus (`-`) or logical `not`."""

    op: str
    operand: Expr
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Call:
    """A function application: `exp(x)`, `max(a, b)`, `ceil(M / M0)`."""

    fn: str
    args: tuple[Expr, ...]
    span: Span | None = _SPAN


Expr = Union[Num, Name, Var, Extent, Param, Access, BinOp, Unary, Call]

ARITH_OPS = ("+", "-", "*", "/", "//", "%")
CMP_OPS = ("<", "<=", "==", "!=", ">=", ">")
BOOL_OPS = ("and", "or")
#: functions of values, with their arity (`ceil` is for extents only)
MAP_FUNCTIONS = {"exp": 1, "log": 1, "sqrt": 1, "tanh": 1, "sigmoid": 1, "abs": 1,
                 "max": 2, "min": 2}
EXTENT_FUNCTIONS = {"ceil": 1, "sqrt": 1, "max": 2, "min": 2, "abs": 1}
REDUCE_OPS = {"max": "max", "min": "min", "+": "sum", "sum": "sum", "*": "prod", "prod": "prod"}


def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Access):
        return e.indices
    if isinstance(e, BinOp):
        return (e.left, e.right)
    if isinstance(e, Unary):
        return (e.operand,)
    if isinstance(e, Call):
        return e.args
    return ()


def walk(e: Expr) -> Iterator[Expr]:
    """Every node of an expression, parents before children."""
    yield e
    for c in children(e):
        yield from walk(c)


def factors(e: Expr) -> list[tuple[Expr, bool]]:
    """A product `a * b / c` as its factors with a reciprocal flag: [(a, F), (b, F), (c, T)]."""
    out: list[tuple[Expr, bool]] = []

    def go(x: Expr, recip: bool) -> None:
        if isinstance(x, BinOp) and x.op == "*":
            go(x.left, recip)
            go(x.right, recip)
        elif isinstance(x, BinOp) and x.op == "/":
            go(x.left, recip)
            go(x.right, not recip)
        else:
            out.append((x, recip))

    go(e, False)
    return out


def iterate_read(index: Expr) -> str:
    """Which iterate an index at an iterative axis reads: `m1` "prev", `m1+1` "next",
    `M1` "final", `0` "initial" (the checker admits no other form)."""
    if isinstance(index, Var):
        return "prev"
    if isinstance(index, Extent):
        return "final"
    if isinstance(index, Num):
        return "initial"
    return "next"


def value_vars(e: Expr) -> set[str]:
    """Rank variables an expression depends on (through indices and as values)."""
    return {n.name for n in walk(e) if isinstance(n, Var)}


# ----------------------------------------------------------------------------- declarations
@dataclass(frozen=True, slots=True)
class RankDecl:
    """`rank M1 = M / M0`: extent is None when symbolic (bound from input shapes)."""

    name: str
    extent: Expr | None
    span: Span | None = _SPAN

    @property
    def var(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class TensorDecl:
    """`input Q[e, p] : bf16` or `output AV[f, p]`: ranks by variable name."""

    kind: str  # "input" | "output"
    name: str
    indices: tuple[str, ...]
    dtype: str
    span: Span | None = _SPAN
    index_spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ParamDecl:
    """`param scale = 1 / sqrt(E)` (a constant) or `param s0` (a run-time argument)."""

    name: str
    value: Expr | None
    span: Span | None = _SPAN


# ----------------------------------------------------------------------------- Einsums
@dataclass(frozen=True, slots=True)
class Index:
    """One LHS index: `p` (plain), `m1+1` (next iterate) or `m1=0` (initial iterate)."""

    var: str
    kind: str = "plain"  # "plain" | "next" | "init" | "invalid" (reported by the checker)
    span: Span | None = _SPAN
    problem: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Reduction:
    """`:: max(m0)`: reduce the named variables with `op` (sum, max, min, prod)."""

    op: str
    vars: tuple[str, ...]
    span: Span | None = _SPAN


@dataclass(frozen=True, slots=True)
class Einsum:
    """`LHS[indices] = rhs :: reductions where filter`.

    After checking, `space` is the iteration space (LHS variables first, then the reduced
    ones in order of appearance) and `reduced` lists each reduction in the order it is
    applied: the implicit `+` first, then the annotations as written.
    """

    tensor: str
    indices: tuple[Index, ...]
    rhs: Expr
    annotations: tuple[Reduction, ...] = ()
    filter: Expr | None = None
    span: Span | None = _SPAN
    space: tuple[str, ...] = field(default=(), compare=False)
    reduced: tuple[Reduction, ...] = field(default=(), compare=False)

    @property
    def lhs_vars(self) -> tuple[str, ...]:
        return tuple(i.var for i in self.indices)

    @property
    def kind(self) -> str:
        """"init" (`T[v=0] = ...`), "recur" (`T[v+1] = ...`) or "plain"."""
        kinds = {i.kind for i in self.indices}
        return "init" if "init" in kinds else "recur" if "next" in kinds else "plain"

    @property
    def iter_var(self) -> str | None:
        """The iterative variable of an init or recurrence statement."""
        for i in self.indices:
            if i.kind != "plain":
                return i.var
        return None


@dataclass(frozen=True, slots=True)
class Stop:
    """`stop m1 >= M1`: the (implied) stopping condition of an iterative rank."""

    cond: Expr
    span: Span | None = _SPAN


def substitute(x: Expr, mapping: dict) -> Expr:
    """`x` with each rank variable named in `mapping` replaced by its expression."""
    if isinstance(x, Var) and x.name in mapping:
        return mapping[x.name]
    if isinstance(x, Access):
        return Access(x.tensor, tuple(substitute(i, mapping) for i in x.indices), x.span)
    if isinstance(x, BinOp):
        return BinOp(x.op, substitute(x.left, mapping), substitute(x.right, mapping), x.span)
    if isinstance(x, Unary):
        return Unary(x.op, substitute(x.operand, mapping), x.span)
    if isinstance(x, Call):
        return Call(x.fn, tuple(substitute(a, mapping) for a in x.args), x.span)
    return x


def reads(e: Einsum) -> list[Access]:
    """Every tensor read of an Einsum (right-hand side and filter), in order."""
    out: list[Access] = []
    for x in (e.rhs, e.filter):
        if x is not None:
            out.extend(a for a in walk(x) if isinstance(a, Access))
    return out


Statement = Union[RankDecl, TensorDecl, ParamDecl, Einsum, Stop]


@dataclass(frozen=True, slots=True)
class Module:
    """A parsed spec: its statements in source order (the AST)."""

    statements: tuple[Statement, ...]
    source_name: str = field(default="<spec>", compare=False)
