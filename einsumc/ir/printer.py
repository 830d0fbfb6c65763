"""Print a checked program (or an expression) back as valid `.ein` text.

The one canonical printer: dumps, diagnostics notes and golden files use it, and
`parse(print(p))` checks to a program equal to `p` (spans aside).
"""
from __future__ import annotations

import math

from . import nodes as N
from .program import Program

# binding strength of each operator (higher binds tighter)
_PREC = {"or": 1, "and": 2, "not": 3, "<": 4, "<=": 4, "==": 4, "!=": 4, ">=": 4, ">": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "//": 6, "%": 6, "neg": 7}


def print_expr(e: N.Expr) -> str:
    return _expr(e, 0)


def _num(v: float, text: str) -> str:
    if v == math.inf:
        return "inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _expr(e: N.Expr, ctx: int) -> str:
    if isinstance(e, N.Num):
        return _num(e.value, e.text)
    if isinstance(e, (N.Name, N.Var, N.Extent, N.Param)):
        return e.name
    if isinstance(e, N.Access):
        if not e.indices:
            return e.tensor
        return f"{e.tensor}[{', '.join(_expr(i, 0) for i in e.indices)}]"
    if isinstance(e, N.Call):
        return f"{e.fn}({', '.join(_expr(a, 0) for a in e.args)})"
    if isinstance(e, N.Unary):
        p = _PREC["not" if e.op == "not" else "neg"]
        inner = _expr(e.operand, p)
        s = f"not {inner}" if e.op == "not" else f"-{inner}"
        return f"({s})" if p < ctx else s
    if isinstance(e, N.BinOp):
        p = _PREC[e.op]
        # left-associative: the right operand of a same-precedence operator needs parentheses
        left = _expr(e.left, p)
        right = _expr(e.right, p + 1)
        if e.op in ("<", "<=", "==", "!=", ">=", ">"):
            left = _expr(e.left, p + 1)
        s = f"{left} {e.op} {right}"
        return f"({s})" if p < ctx else s
    raise TypeError(f"cannot print {e!r}")


def print_index(ix: N.Index) -> str:
    return {"plain": ix.var, "next": f"{ix.var}+1", "init": f"{ix.var}=0"}[ix.kind]


def print_einsum(e: N.Einsum) -> str:
    lhs = e.tensor if not e.indices else f"{e.tensor}[{', '.join(print_index(i) for i in e.indices)}]"
    s = f"{lhs} = {print_expr(e.rhs)}"
    if e.annotations:
        s += " :: " + ", ".join(f"{_redop(r.op)}({', '.join(r.vars)})" for r in e.annotations)
    if e.filter is not None:
        s += f" where {print_expr(e.filter)}"
    return s


def _redop(op: str) -> str:
    return {"sum": "sum", "prod": "prod", "max": "max", "min": "min"}[op]


def _decl(d: N.TensorDecl) -> str:
    s = d.name + (f"[{', '.join(d.indices)}]" if d.indices else "")
    return s + (f" : {d.dtype}" if d.dtype and d.dtype != "f32" else "")


def print_program(p: Program) -> str:
    lines = []
    for r in p.ranks:
        lines.append(f"rank {r.name}" + (f" = {print_expr(r.extent)}" if r.extent is not None else ""))
    for q in p.params:
        lines.append(f"param {q.name}" + (f" = {print_expr(q.value)}" if q.value is not None else ""))
    if p.inputs:
        lines.append("input " + ", ".join(_decl(d) for d in p.inputs))
    if p.outputs:
        lines.append("output " + ", ".join(_decl(d) for d in p.outputs))
    lines.append("")
    lines.extend(print_einsum(e) for e in p.einsums)
    for s in p.stops:
        lines.append(f"stop {print_expr(s.cond)}")
    return "\n".join(lines) + "\n"
