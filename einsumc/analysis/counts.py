"""Operation counts by class, as sympy expressions in the extents.

Accounting rule (documented in docs/analysis.md):
- Every map node of an Einsum's right-hand side is counted once per point of *its own*
  variables (a subexpression that does not vary along a rank is computed once across it):
  `*` mul, `/` div, `+` and `-` add, `max`/`min` max, `exp`, and each other function by
  name; comparisons of a `where` filter count as `compare`.
- A sum of a product (a contraction) is counted as one MAC per point of the iteration
  space for the first two factors, plus one mul per further factor; constant factors
  (`/ sqrt(E)`) are applied once per output point (the sum distributes over them).
- Each annotated reduction combines every point of the space it reduces: `max`/`min` as
  max, `sum` as add, `prod` as mul. A plain copy (`BK[e, m1, m0] = K[e, m1*M0 + m0]`)
  costs nothing.
- Counts are dense: points removed by a filter are still counted (an upper bound; the
  filter's own comparisons are reported as `compare`).
"""
from __future__ import annotations

import sympy

from ..ir import nodes as N
from ..ir.program import Program
from ..ir.symbolic import to_sympy

CLASSES = ("mac", "mul", "add", "max", "exp", "div", "compare")
_FN_CLASS = {"exp": "exp", "max": "max", "min": "max"}


def extent_symbols(prog: Program) -> dict[str, sympy.Expr]:
    """Each rank variable's extent as a sympy expression (derived extents substituted)."""
    exts: dict[str, sympy.Expr] = {}
    for _ in range(len(prog.ranks) + 1):
        for r in prog.ranks:
            if r.extent is None:
                exts[r.name] = sympy.Symbol(r.name, integer=True, positive=True)
            else:
                e = to_sympy(r.extent)
                exts[r.name] = e.subs({sympy.Symbol(k, integer=True, positive=True): v
                                       for k, v in exts.items() if k != r.name})
    return {r.var: exts[r.name] for r in prog.ranks}


def _size(vars_, ext) -> sympy.Expr:
    out = sympy.Integer(1)
    for v in sorted(vars_):
        out *= ext[v]
    return out


def _vars(x: N.Expr, space: set[str]) -> set[str]:
    return N.value_vars(x) & space


def _add(counts, cls, n):
    counts[cls] = counts.get(cls, sympy.Integer(0)) + n


def _walk_values(x: N.Expr):
    """The map nodes of an expression: index arithmetic and constants are not computed
    per point (indices are addresses; constants are folded at compile time)."""
    if _is_constant(x):
        return
    yield x
    if not isinstance(x, N.Access):
        for c in N.children(x):
            yield from _walk_values(c)


def _count_expr(x: N.Expr, space: set[str], ext, counts) -> None:
    for n in _walk_values(x):
        size = _size(_vars(n, space), ext)
        if isinstance(n, N.BinOp):
            cls = {"*": "mul", "/": "div", "+": "add", "-": "add"}.get(n.op)
            if n.op in N.CMP_OPS:
                cls = "compare"
            if cls:
                _add(counts, cls, size)
        elif isinstance(n, N.Unary) and n.op == "-":
            pass  # a sign flip is free
        elif isinstance(n, N.Call):
            _add(counts, _FN_CLASS.get(n.fn, n.fn), size)


def _is_constant(x: N.Expr) -> bool:
    return not any(isinstance(n, (N.Var, N.Access)) for n in N.walk(x))




def einsum_counts(e: N.Einsum, ext) -> dict[str, sympy.Expr]:
    counts: dict[str, sympy.Expr] = {}
    space = set(e.space)
    total = _size(space, ext)
    reds = list(e.reduced)
    if e.filter is not None:  # one comparison per point; index arithmetic is addressing
        for n in N.walk(e.filter):
            if isinstance(n, N.BinOp) and n.op in N.CMP_OPS:
                _add(counts, "compare", _size(_vars(n, space), ext))
    is_copy = isinstance(e.rhs, N.Access) and not reds
    if is_copy:
        return counts
    cur = set(space)
    if reds and reds[0].op == "sum":
        facs = N.factors(e.rhs)
        varying = [(f, r) for f, r in facs if not _is_constant(f)]
        consts = [(f, r) for f, r in facs if _is_constant(f)]
        if len(varying) >= 2:  # a contraction: MACs over the space
            _add(counts, "mac", total)
            for f, r in varying[2:]:
                _add(counts, "div" if r else "mul", total)
            if any(r for _, r in varying[:2]):  # a reciprocal among the first two factors
                _add(counts, "div", total)
            cur = space - set(reds[0].vars)
            out_size = _size(cur, ext)
            for f, r in consts:
                _add(counts, "div" if r else "mul", out_size)
            for f, _ in varying + consts:
                _count_expr_children(f, space, ext, counts)
            reds = reds[1:]
        else:
            _count_expr(e.rhs, space, ext, counts)
    else:
        _count_expr(e.rhs, space, ext, counts)
    for r in reds:
        _add(counts, {"sum": "add", "max": "max", "min": "max", "prod": "mul"}[r.op],
             _size(cur, ext))
        cur = cur - set(r.vars)
    return counts


def _count_expr_children(f: N.Expr, space, ext, counts) -> None:
    """Count the ops inside a factor (not the factor's own multiplication)."""
    if isinstance(f, N.Access):
        return
    _count_expr(f, space, ext, counts)


def op_counts(prog: Program) -> tuple[list[dict[str, sympy.Expr]], dict[str, sympy.Expr]]:
    """Per-Einsum counts and the cascade's totals, by class."""
    ext = extent_symbols(prog)
    per = [einsum_counts(e, ext) for e in prog.einsums]
    total: dict[str, sympy.Expr] = {}
    for c in per:
        for k, v in c.items():
            total[k] = sympy.expand(total.get(k, sympy.Integer(0)) + v)
    return per, dict(sorted(total.items(), key=lambda kv: (CLASSES.index(kv[0])
                                                           if kv[0] in CLASSES else 99, kv[0])))
