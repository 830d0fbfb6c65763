"""Shared machinery of the transforms: rebuilding a checked program, fresh names,
dependency-respecting statement order, and expression rewriting.

A transform is a pure function `Program -> Program`. It builds new IR statements, and
`rebuild` prints them as `.ein` and checks the text again: every transform's output is a
valid, checked cascade that users can read and edit (`einsumc transform`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

from ..diagnostics import EinsumcError, Span, error, note
from ..ir import nodes as N
from ..ir.printer import print_einsum, print_program
from ..ir.program import Program


class TransformRefused(EinsumcError):
    """A transform named explicitly does not apply; the diagnostic names the blocker."""


def refuse(prog: Program, transform: str, message: str, span: Span | None,
           *notes) -> TransformRefused:
    return TransformRefused([error(f"{transform}: {message}", span, *notes)], prog.source)


def rebuild(prog: Program, einsums: list[N.Einsum], ranks: Iterable[N.RankDecl] | None = None,
            header: str = "") -> Program:
    """A checked program with the same interface and new statements (order fixed up)."""
    new = replace(prog, ranks=tuple(ranks) if ranks is not None else prog.ranks,
                  einsums=tuple(order_statements(einsums)), stops=())
    text = header + print_program(new)
    from ..driver import load
    name = (prog.source.name if prog.source else "<spec>").removesuffix(" (transformed)")
    try:
        return load(text, name=f"{name} (transformed)")
    except EinsumcError as exc:  # a transform must never produce an invalid cascade
        raise AssertionError("transform produced an invalid cascade:\n" + str(exc)
                             + "\n--- text ---\n" + text) from None


def fresh(prog_names: set[str], base: str) -> str:
    """`base`, or `base` with a numeric suffix, not yet used; the name is then reserved."""
    name = base
    k = 2
    while name in prog_names:
        name = f"{base}{k}"
        k += 1
    prog_names.add(name)
    return name


def used_names(prog: Program) -> set[str]:
    names = {r.name for r in prog.ranks} | {r.var for r in prog.ranks}
    names |= {p.name for p in prog.params} | set(prog.tensors)
    return names




reads = N.reads


def _iterate_of(a: N.Access, iter_axes: dict[str, int]) -> str | None:
    k = iter_axes.get(a.tensor)
    if k is None or k >= len(a.indices):
        return None
    return N.iterate_read(a.indices[k])


def order_statements(einsums: list[N.Einsum]) -> list[N.Einsum]:
    """A stable topological order: each statement after what it reads (for an iterative
    tensor: its previous iterate after the initialization, its new and final iterates
    after the recurrence), otherwise in the given order."""
    iter_axes: dict[str, int] = {}
    for e in einsums:
        for k, ix in enumerate(e.indices):
            if ix.kind in ("init", "next"):
                iter_axes[e.tensor] = k
    producers: dict[tuple[str, str], int] = {}
    for i, e in enumerate(einsums):
        producers[(e.tensor, {"init": "init", "recur": "recur", "plain": "plain"}[e.kind])] = i
    deps: list[set[int]] = []
    for i, e in enumerate(einsums):
        d: set[int] = set()
        if e.kind == "recur" and (e.tensor, "init") in producers:
            d.add(producers[(e.tensor, "init")])
        for a in reads(e):
            it = _iterate_of(a, iter_axes)
            if it is None:
                j = producers.get((a.tensor, "plain"))
            elif it in ("prev", "initial"):
                j = producers.get((a.tensor, "init"))
            else:
                j = producers.get((a.tensor, "recur"))
            if j is not None and j != i:
                d.add(j)
        deps.append(d)
    done: list[int] = []
    placed: set[int] = set()
    while len(done) < len(einsums):
        for i in range(len(einsums)):
            if i not in placed and deps[i] <= placed:
                done.append(i)
                placed.add(i)
                break
        else:  # a cycle: keep the given order for the rest (the checker will say why)
            done.extend(i for i in range(len(einsums)) if i not in placed)
            break
    return [einsums[i] for i in done]


def map_expr(x: N.Expr, fn: Callable[[N.Expr], N.Expr | None]) -> N.Expr:
    """Rebuild an expression bottom-up; `fn` returns a replacement for a node, or None."""
    if isinstance(x, N.Access):
        new = replace(x, indices=tuple(map_expr(i, fn) for i in x.indices))
    elif isinstance(x, N.BinOp):
        new = replace(x, left=map_expr(x.left, fn), right=map_expr(x.right, fn))
    elif isinstance(x, N.Unary):
        new = replace(x, operand=map_expr(x.operand, fn))
    elif isinstance(x, N.Call):
        new = replace(x, args=tuple(map_expr(a, fn) for a in x.args))
    else:
        new = x
    got = fn(new)
    return new if got is None else got


def lhs_access(e: N.Einsum) -> N.Access:
    """The LHS as an access with plain variables (what a reader writes to read it)."""
    return N.Access(e.tensor, tuple(N.Var(ix.var) for ix in e.indices))


def einsum(tensor: str, indices: list, rhs: N.Expr, reductions=(), where=None) -> N.Einsum:
    """A new Einsum; `indices` are variable names, or (name, "next"/"init") pairs."""
    idx = tuple(N.Index(i, "plain") if isinstance(i, str) else N.Index(i[0], i[1])
                for i in indices)
    return N.Einsum(tensor, idx, rhs, tuple(N.Reduction(op, tuple(vs)) for op, vs in reductions),
                    where)


def describe(e: N.Einsum) -> str:
    return f"line {e.span.line} (`{print_einsum(e)}`)" if e.span else f"`{print_einsum(e)}`"


def at(e: N.Einsum, text: str):
    return note(text, e.span)
