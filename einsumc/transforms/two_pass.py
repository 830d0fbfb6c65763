"""two-pass: local maxima per tile, a global max, then a correcting pass (FuseMax §IV-E2).

The alternative to `online` used by TileFlow and Choi et al.: over a partitioned rank,

    before                                      after
    GM[p]       = BQK[m1,m0,p] :: max(m1, m0)   LM[m1, p]     = BQK[m1, m0, p] :: max(m0)
    SN[m1,m0,p] = exp(BQK[m1,m0,p] - GM[p])     SLN[m1,m0,p]  = exp(BQK[m1,m0,p] - LM[m1,p])
    SD[p]       = SN[m1, m0, p]                 SLD[m1, p]    = SLN[m1, m0, p]
    A[m1,m0,p]  = SN[m1,m0,p] / SD[p]           GM[p]         = LM[m1, p] :: max(m1)
                                                PRM[m1, p]    = exp(LM[m1, p] - GM[p])
                                                SD[p]         = SLD[m1, p] * PRM[m1, p]
                                                SN[m1,m0,p]   = SLN[m1,m0,p] * PRM[m1,p]
                                                A[m1,m0,p]    = SN[m1,m0,p] / SD[p]

Each sum of the exponentials becomes a sum over tiles of corrected local sums; normalised
values read whole are corrected in a second pass over the tiles (`SN = SLN * PRM`). The
pass analysis counts 2 when such values are read (FuseMax's 2-pass cascade); when only
sums are read, the second pass touches only the M1-long partial fibers, which the count
ignores (FuseMax §3.4) but a cost model charges.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import nodes as N
from ..ir.program import Program
from .base import describe, einsum, fresh, map_expr, rebuild, refuse, used_names
from .online import find

NAME = "two-pass"


def two_pass(prog: Program) -> Program:
    found, problems = find(prog)
    if not found:
        if problems:
            g, why = problems[0]
            raise refuse(prog, NAME, f"{describe(g)} is not a softmax normaliser: {why}", g.span)
        raise refuse(prog, NAME, "no max-then-exp-then-sum chain over a partitioned rank "
                     "(apply `partition` first)", None)
    rank, v1, v0, gi, si, sums, others = found[0]
    einsums = list(prog.einsums)
    g, sn = einsums[gi], einsums[si]
    names = used_names(prog)
    x = g.rhs
    gvars = [ix.var for ix in g.indices]
    lm_vars = [ix.name for ix in x.indices if ix.name != v0]
    LM, SLN, PRM = (fresh(names, n) for n in ("LM", "SLN", "PRM"))
    lm_acc = N.Access(LM, tuple(N.Var(v) for v in lm_vars))
    new = {gi: [einsum(LM, lm_vars, x, [("max", (v0,))]),
                replace(sn, tensor=SLN, rhs=N.Call("exp", (N.BinOp(
                    "-", sn.rhs.args[0].left, lm_acc),))),
                replace(g, rhs=lm_acc, annotations=(N.Reduction("max", (v1,)),)),
                einsum(PRM, lm_vars, N.Call("exp", (N.BinOp("-", lm_acc, N.Access(
                    g.tensor, tuple(N.Var(v) for v in gvars))),)))]}
    prm_acc = N.Access(PRM, tuple(N.Var(v) for v in lm_vars))
    for ci in sums:
        c = einsums[ci]
        base = c.tensor[1:] if c.tensor.startswith("S") and len(c.tensor) > 1 else c.tensor
        SL = fresh(names, "SL" + base)
        cvars = [ix.var for ix in c.indices]
        idx = cvars[:-1] + [v1] + cvars[-1:] if cvars else [v1]
        rhs = map_expr(c.rhs, lambda n: replace(n, tensor=SLN)
                       if isinstance(n, N.Access) and n.tensor == sn.tensor else None)
        new[ci] = [einsum(SL, idx, rhs),
                   replace(c, rhs=N.BinOp("*", N.Access(SL, tuple(N.Var(v) for v in idx)),
                                          prm_acc), annotations=())]
    if others:  # normalised values read whole: corrected in the second pass
        new[si] = [replace(sn, rhs=N.BinOp("*", N.Access(SLN, tuple(
            ix for ix in sn.rhs.args[0].left.indices)), prm_acc))]
    else:
        new[si] = []
    out: list[N.Einsum] = []
    for i, e in enumerate(einsums):
        out.extend(new.get(i, [e]))
    return rebuild(prog, out)
