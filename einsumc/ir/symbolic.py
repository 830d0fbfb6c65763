"""Extents and constant expressions as sympy expressions, and their evaluation.

Extents are integers or integer expressions of other extents. Analyses keep them symbolic
(sympy); backends evaluate them once the symbolic extents are bound from input shapes.
"""
from __future__ import annotations

import math

import sympy

from .nodes import BinOp, Call, Expr, Extent, Num, Param, Unary


class NotConstant(Exception):
    """An expression that is not a constant of extents and params."""


def to_sympy(e: Expr, params: dict[str, Expr] | None = None) -> sympy.Expr:
    """The sympy form of an extent expression (extents become integer symbols)."""
    if isinstance(e, Num):
        v = e.value
        return sympy.oo if v == math.inf else sympy.Integer(int(v)) if v == int(v) else sympy.Float(v)
    if isinstance(e, Extent):
        return sympy.Symbol(e.name, integer=True, positive=True)
    if isinstance(e, Param):
        if params is not None and params.get(e.name) is not None:
            return to_sympy(params[e.name], params)
        return sympy.Symbol(e.name, real=True)
    if isinstance(e, Unary) and e.op == "-":
        return -to_sympy(e.operand, params)
    if isinstance(e, BinOp):
        a, b = to_sympy(e.left, params), to_sympy(e.right, params)
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
                "/": lambda: a / b, "//": lambda: sympy.floor(a / b),
                "%": lambda: sympy.Mod(a, b)}[e.op]()
    if isinstance(e, Call):
        args = [to_sympy(x, params) for x in e.args]
        fns = {"ceil": sympy.ceiling, "sqrt": sympy.sqrt, "exp": sympy.exp, "log": sympy.log,
               "abs": sympy.Abs, "max": sympy.Max, "min": sympy.Min, "tanh": sympy.tanh}
        if e.fn in fns:
            return fns[e.fn](*args)
    raise NotConstant(e)


def evaluate(e: Expr, extents: dict[str, int], params: dict[str, float]) -> float:
    """Evaluate a constant expression with bound extents and params (Python floats/ints).

    Exact division of integers stays exact (`M / M0` is an int when it divides).
    Raises KeyError for an unbound name and ZeroDivisionError for a zero divisor.
    """
    if isinstance(e, Num):
        return int(e.value) if e.value == int(e.value) and math.isfinite(e.value) else e.value
    if isinstance(e, Extent):
        return extents[e.name]
    if isinstance(e, Param):
        return params[e.name]
    if isinstance(e, Unary) and e.op == "-":
        return -evaluate(e.operand, extents, params)
    if isinstance(e, BinOp):
        a, b = evaluate(e.left, extents, params), evaluate(e.right, extents, params)
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op == "/":
            if isinstance(a, int) and isinstance(b, int) and b != 0 and a % b == 0:
                return a // b
            return a / b
        if e.op == "//":
            return math.floor(a / b) if not (isinstance(a, int) and isinstance(b, int)) else a // b
        if e.op == "%":
            return a % b
    if isinstance(e, Call):
        args = [evaluate(x, extents, params) for x in e.args]
        if e.fn == "ceil":
            a = args[0]
            return int(math.ceil(a)) if not isinstance(a, int) else a
        if e.fn == "sqrt":
            return math.sqrt(args[0])
        if e.fn == "exp":
            return math.exp(args[0])
        if e.fn == "log":
            return math.log(args[0])
        if e.fn == "tanh":
            return math.tanh(args[0])
        if e.fn == "abs":
            return abs(args[0])
        if e.fn == "max":
            return max(args)
        if e.fn == "min":
            return min(args)
        if e.fn == "sigmoid":
            return 1.0 / (1.0 + math.exp(-args[0]))
    raise NotConstant(e)


def provably_different(a: sympy.Expr, b: sympy.Expr) -> bool:
    """True when two extent expressions cannot be equal for every binding."""
    try:
        diff = sympy.simplify(a - b)
    except Exception:  # pragma: no cover - sympy internals
        return False
    return diff != 0
