"""defer-division: divide once after a reduction instead of every term (FuseMax §IV-D).

    before                                   after
    A[m, p]  = SN[m, p] / SD[p]              SNV[f, p] = SN[m, p] * V[f, m]
    AV[f, p] = A[m, p] * V[f, m]             AV[f, p]  = SNV[f, p] / SD[p]

and, inside one Einsum, `O[f, p] = N[m, p] * V[f, m] / D[p]` (summed over `m`) becomes
`NV[f, p] = N[m, p] * V[f, m]; O[f, p] = NV[f, p] / D[p]`.

Legality: the reduction must be a plain sum (a `max` or `prod` does not distribute over a
division), the divisor must vary only along the result's own variables (then the sum
distributes: sum_m (x_m / d) = (sum_m x_m) / d, with x / 0 = 0 on both sides), the
quotient must be read once, by that sum of products, and neither Einsum may have a filter.
The rewrite merges the normalisation pass into the next one: Cascade 4's 3 passes become 2,
and the number of divisions drops from M*P to F*P.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import nodes as N
from ..ir.program import Program
from .base import at, describe, einsum, fresh, lhs_access, map_expr, rebuild, reads, refuse, used_names

NAME = "defer-division"




def _product(factors: list) -> N.Expr:
    num = [f for f, r in factors if not r]
    den = [f for f, r in factors if r]
    expr = num[0] if num else N.Num(1.0)
    for f in num[1:]:
        expr = N.BinOp("*", expr, f)
    for f in den:
        expr = N.BinOp("/", expr, f)
    return expr


def _sum_vars(e: N.Einsum) -> set[str]:
    return set(e.reduced[0].vars) if e.reduced and e.reduced[0].op == "sum" else set()


def _only_sum(e: N.Einsum) -> bool:
    """A plain sum (no `max`/`min`/`prod` after it): the sum distributes over a division."""
    return len(e.reduced) == 1 and e.reduced[0].op == "sum"


def _readers(prog: Program, name: str) -> list[int]:
    return [i for i, e in enumerate(prog.einsums) if any(a.tensor == name for a in reads(e))]


def candidates(prog: Program):
    """Yield (kind, details) for every division that can be deferred."""
    outputs = {o.name for o in prog.outputs}
    for i, e in enumerate(prog.einsums):
        # A = N / D read only by a sum of products
        if (e.kind == "plain" and e.filter is None and isinstance(e.rhs, N.BinOp)
                and e.rhs.op == "/" and e.tensor not in outputs):
            rd = _readers(prog, e.tensor)
            if len(rd) == 1:
                c = prog.einsums[rd[0]]
                facs = N.factors(c.rhs)
                hits = [f for f, r in facs if isinstance(f, N.Access) and f.tensor == e.tensor
                        and not r]
                sv = _sum_vars(c)
                once = sum(1 for a in N.reads(c) if a.tensor == e.tensor) == 1
                if (len(hits) == 1 and once and _only_sum(c) and c.filter is None
                        and all(isinstance(ix, N.Var) for ix in hits[0].indices)):
                    sub = {ix.var: hits[0].indices[k].name for k, ix in enumerate(e.indices)}
                    den_vars = {sub.get(x, x) for x in N.value_vars(e.rhs.right)}
                    if den_vars <= set(c.lhs_vars):  # constant along every summed variable
                        yield ("pair", i, rd[0], sub)
        # one Einsum: sum over r of (... / D) with D constant along r
        sv = _sum_vars(e)
        if sv and _only_sum(e) and e.filter is None and e.kind == "plain":
            facs = N.factors(e.rhs)
            dens = [f for f, r in facs if r and N.value_vars(f) <= set(e.lhs_vars)
                    and any(isinstance(n, N.Access) for n in N.walk(f))]
            nums = [f for f, r in facs if not r]
            if dens and len(nums) >= 1 and len(facs) >= 3:
                yield ("inner", i, None, None)


def blockers(prog: Program) -> list:
    """Divisions that could have been deferred but are read in another way."""
    outputs = {o.name for o in prog.outputs}
    out = []
    for i, e in enumerate(prog.einsums):
        if (e.kind == "plain" and isinstance(e.rhs, N.BinOp) and e.rhs.op == "/"
                and e.tensor not in outputs):
            for j in _readers(prog, e.tensor):
                c = prog.einsums[j]
                facs = N.factors(c.rhs)
                ok = _sum_vars(c) and any(isinstance(f, N.Access) and f.tensor == e.tensor
                                          and not r for f, r in facs) and c.filter is None
                if not ok:
                    out.append((i, j))
    return out


def defer_division(prog: Program, required: bool = True) -> Program:
    """Defer every division that can be deferred (at least one when `required`)."""
    found = list(candidates(prog))
    if not found:
        if not required:
            return prog
        blocked = blockers(prog)
        if blocked:
            i, j = blocked[0]
            e, c = prog.einsums[i], prog.einsums[j]
            raise refuse(prog, NAME, f"the division of {describe(e)} cannot be deferred: "
                         f"'{e.tensor}' is read by {describe(c)}, which is not a sum of products "
                         f"over the divided values (e.g. a threshold on normalised "
                         f"probabilities needs them materialized)", c.span,
                         at(e, "the division is here"))
        raise refuse(prog, NAME, "no division to defer: it needs `A = N / D` read only by a "
                     "sum of products whose summed variables D does not vary along, or a sum "
                     "of products divided by such a D", None)
    names = used_names(prog)
    einsums = list(prog.einsums)
    kind, i, j, sub = found[0]
    if kind == "pair":
        a, c = einsums[i], einsums[j]
        num, den = a.rhs.left, a.rhs.right

        def rename(x):
            return map_expr(x, lambda n: N.Var(sub.get(n.name, n.name))
                            if isinstance(n, N.Var) else None)
        num, den = rename(num), rename(den)
        facs = N.factors(c.rhs)
        others = [(f, r) for f, r in facs if not (isinstance(f, N.Access) and f.tensor == a.tensor)]
        new_name = fresh(names, _join([num] + [f for f, r in others if not r]) or c.tensor + "N")
        inner = replace(c, tensor=new_name, rhs=_product([(num, False)] + others))
        outer = einsum(c.tensor, [x.var for x in c.indices],
                       N.BinOp("/", lhs_access(inner), den))
        einsums[j] = outer
        einsums[i] = inner
    else:
        e = einsums[i]
        facs = N.factors(e.rhs)
        dens = [(f, r) for f, r in facs if r and N.value_vars(f) <= set(e.lhs_vars)
                and any(isinstance(n, N.Access) for n in N.walk(f))]
        rest = [(f, r) for f, r in facs if (f, r) not in dens]
        new_name = fresh(names, _join([f for f, r in rest if not r]) or e.tensor + "N")
        inner = replace(e, tensor=new_name, rhs=_product(rest))
        den = dens[0][0]
        for f, _ in dens[1:]:
            den = N.BinOp("*", den, f)
        outer = einsum(e.tensor, [x.var for x in e.indices], N.BinOp("/", lhs_access(inner), den))
        einsums[i:i + 1] = [inner, outer]
    out = rebuild(prog, einsums)
    return defer_division(out, required=False)  # any further divisions


def _join(parts: list[N.Expr]) -> str:
    names = [p.tensor for p in parts if isinstance(p, N.Access)]
    if len(names) != len(parts) or not names:
        return ""
    text = "".join(names)
    return text if len(text) <= 12 else ""
