"""online: iterative construction of a softmax normaliser (FuseMax §III-C2, Cascade 5).

Over a partitioned rank (`m -> m1, m0`), a global max, an `exp` against it and the sums
of that `exp` become a running max, a correction factor and corrected running sums:

    before (after partition and defer-division)     after
    GM[p]        = BQK[m1, m0, p] :: max(m1, m0)     RM[m1=0, p] = -inf  (RD, RNV = 0)
    SN[m1,m0,p]  = exp(BQK[m1,m0,p] - GM[p])         LM[m1, p] = BQK[m1, m0, p] :: max(m0)
    SD[p]        = SN[m1, m0, p]                     RM[m1+1, p] = max(RM[m1, p], LM[m1, p])
    SNV[f, p]    = SN[m1,m0,p] * BV[f,m1,m0]         SLN[m1,m0,p] = exp(BQK[m1,m0,p] - RM[m1+1,p])
    AV[f, p]     = SNV[f, p] / SD[p]                 SLD[m1, p] = SLN[m1, m0, p]
                                                     SLNV[f,m1,p] = SLN[m1,m0,p] * BV[f,m1,m0]
                                                     PRM[m1, p] = exp(RM[m1, p] - RM[m1+1, p])
                                                     SPD[m1, p] = RD[m1, p] * PRM[m1, p]
                                                     RD[m1+1, p] = SLD[m1, p] + SPD[m1, p]
                                                     SPNV[f,m1,p] = RNV[f,m1,p] * PRM[m1,p]
                                                     RNV[f,m1+1,p] = SLNV[f,m1,p] + SPNV[f,m1,p]
                                                     AV[f, p] = RNV[f, M1, p] / RD[M1, p]

Any number of sums may share the normaliser (denominator, numerator times V, extra outputs);
readers of the global max (a log-sum-exp) read the final running max. Each running sum is
downscaled by exp of its running max, and `PRM` switches it to the new one, so every final
sum equals the original (rule 5: `exp(-inf - -inf) = 0` covers a max still at -inf).

If the normalised values themselves are read (not only summed: e.g. a threshold on
probabilities), they are recomputed after the loop from the final max, which takes a
second pass: the transform then reaches 2 passes and says which Einsum blocks the third.
"""
from __future__ import annotations

from dataclasses import replace

from ..analysis.ranks import rank_vars
from ..ir import nodes as N
from ..ir.program import Program
from .base import describe, einsum, fresh, map_expr, rebuild, reads, refuse, used_names

NAME = "online"


def _ins(vars_: list, item) -> list:
    """Insert the tile index before the last variable (`[b, h, p] -> [b, h, m1, p]`)."""
    return list(vars_[:-1]) + [item] + list(vars_[-1:]) if vars_ else [item]




def find(prog: Program):
    """(rank, v1, v0, G index, SN index, sum consumers, other SN readers) per normaliser."""
    found = []
    problems = []
    for r in prog.ranks:
        rv = rank_vars(prog, r.name)
        kids = rv.children.get(rv.root)
        if not kids or len(kids) != 2:
            continue
        v1, v0 = kids
        for gi, g in enumerate(prog.einsums):
            if not (len(g.reduced) == 1 and g.reduced[0].op == "max"
                    and set(g.reduced[0].vars) == {v1, v0}):
                continue
            if not isinstance(g.rhs, N.Access) or g.filter is not None:
                problems.append((g, "the max must read one tensor, with no filter"))
                continue
            x = g.rhs
            sn = [i for i, e in enumerate(prog.einsums) if _is_exp_of(e, x.tensor, g.tensor)]
            if len(sn) != 1:
                problems.append((g, f"no single `exp({x.tensor} - {g.tensor})` reads this max"))
                continue
            si = sn[0]
            sums, others = [], []
            for ci, c in enumerate(prog.einsums):
                if not any(a.tensor == prog.einsums[si].tensor for a in reads(c)):
                    continue
                facs = N.factors(c.rhs)
                hits = [f for f, rcp in facs if isinstance(f, N.Access)
                        and f.tensor == prog.einsums[si].tensor and not rcp]
                ok = (c.kind == "plain" and c.reduced and c.reduced[0].op == "sum"
                      and {v1, v0} <= set(c.reduced[0].vars) and len(c.reduced) == 1
                      and len(hits) == 1 and c.filter is None)
                (sums if ok else others).append(ci)
            found.append((r.name, v1, v0, gi, si, sums, others))
    return found, problems


def _is_exp_of(e: N.Einsum, x: str, g: str) -> bool:
    r = e.rhs
    return (e.kind == "plain" and isinstance(r, N.Call) and r.fn == "exp"
            and isinstance(r.args[0], N.BinOp) and r.args[0].op == "-"
            and isinstance(r.args[0].left, N.Access) and r.args[0].left.tensor == x
            and isinstance(r.args[0].right, N.Access) and r.args[0].right.tensor == g)


def online(prog: Program) -> Program:
    found, problems = find(prog)
    if not found:
        if problems:
            g, why = problems[0]
            raise refuse(prog, NAME, f"{describe(g)} is not a softmax normaliser: {why}", g.span)
        parts = [r.name for r in prog.ranks if rank_vars(prog, r.name).children]
        hint = "" if parts else " (no rank is partitioned: apply `partition` first)"
        raise refuse(prog, NAME, "no max-then-exp-then-sum chain over a partitioned rank"
                     + hint, None)
    rank, v1, v0, gi, si, sums, others = found[0]
    if not sums:
        raise refuse(prog, NAME, f"the exponentials of {describe(prog.einsums[si])} are never "
                     "summed over the whole rank; nothing to build iteratively",
                     prog.einsums[si].span)
    einsums = list(prog.einsums)
    g, sn = einsums[gi], einsums[si]
    names = used_names(prog)
    r1 = rank + "1" if (rank + "1") in {r.name for r in prog.ranks} else None
    r1 = next(r.name for r in prog.ranks if r.var == v1) if r1 is None else r1
    x = g.rhs
    gvars = [ix.var for ix in g.indices]
    lm_vars = [ix.name for ix in x.indices if ix.name != v0]
    LM, RM, SLN, PRM = (fresh(names, n) for n in ("LM", "RM", "SLN", "PRM"))
    rm_idx = _ins(gvars, v1)

    def acc(name, idx):
        return N.Access(name, tuple(N.Var(i) if isinstance(i, str) else i for i in idx))

    nxt = N.BinOp("+", N.Var(v1), N.Num(1.0))
    # A running max starting at -inf (Cascade 5) turns a row that sees no present point
    # into RM = -inf and running sums = 0, where the original max and sums are absent. The
    # two agree when those values are only divided by each other (0 / 0 = 0, absent reads
    # 0); for any other reader (a log-sum-exp output) the running max starts absent instead
    # (an initialization filtered to nothing), which keeps absence exactly.
    sum_names = {einsums[ci].tensor for ci in sums}
    g_readers = [e for e in einsums if e is not sn and any(a.tensor == g.tensor for a in reads(e))]
    ratio_only = all(isinstance(e.rhs, N.BinOp) and e.rhs.op == "/"
                     and isinstance(e.rhs.left, N.Access) and e.rhs.left.tensor in sum_names
                     and isinstance(e.rhs.right, N.Access) and e.rhs.right.tensor in sum_names
                     for e in einsums if any(a.tensor in sum_names for a in reads(e))
                     and einsums.index(e) not in sums)
    out_names = {o.name for o in prog.outputs}
    exposed = g.tensor in out_names or bool(sum_names & out_names)  # read as they are
    never = None if (not g_readers and ratio_only and not exposed) else N.BinOp(
        "<", N.Extent(r1), N.Num(0.0))
    head = [einsum(RM, _ins(gvars, (v1, "init")), N.Unary("-", N.Num(float("inf"))),
                   where=never)]
    loop = [
        einsum(LM, lm_vars, x, [("max", (v0,))]),
        einsum(RM, _ins(gvars, (v1, "next")), N.Call("max", (acc(RM, rm_idx), acc(LM, lm_vars)))),
    ]
    # SN's own read of the max, now of the new running max
    g_in_sn = sn.rhs.args[0].right
    rm_next = N.Access(RM, tuple(_ins(list(g_in_sn.indices), nxt)))
    loop.append(replace(sn, tensor=SLN, rhs=N.Call("exp", (N.BinOp("-", sn.rhs.args[0].left,
                                                                     rm_next),))))
    corr = []
    final_of: dict[str, tuple[str, int]] = {}
    for ci in sums:
        c = einsums[ci]
        base = c.tensor[1:] if c.tensor.startswith("S") and len(c.tensor) > 1 else c.tensor
        R, SL, SP = (fresh(names, p + base) for p in ("R", "SL", "SP"))
        cvars = [ix.var for ix in c.indices]
        idx = _ins(cvars, v1)
        rhs = map_expr(c.rhs, lambda n: replace(n, tensor=SLN)
                       if isinstance(n, N.Access) and n.tensor == sn.tensor else None)
        summed = tuple(v for v in c.reduced[0].vars if v != v1)
        del summed  # SL keeps every summed variable but the tile index: an implicit sum
        loop.append(einsum(SL, idx, rhs))
        head.append(einsum(R, _ins(cvars, (v1, "init")), N.Num(0.0)))
        corr.append(einsum(SP, idx, N.BinOp("*", acc(R, idx), acc(PRM, rm_idx))))
        corr.append(einsum(R, _ins(cvars, (v1, "next")), N.BinOp("+", acc(SL, idx), acc(SP, idx))))
        final_of[c.tensor] = (R, len(cvars) - 1 if cvars else 0)
    rm_new = N.Access(RM, tuple(_ins([N.Var(v) for v in gvars], nxt)))
    loop.append(einsum(PRM, rm_idx, N.Call("exp", (N.BinOp("-", acc(RM, rm_idx), rm_new),))))
    final_of[g.tensor] = (RM, len(gvars) - 1 if gvars else 0)

    def to_final(n):
        if isinstance(n, N.Access) and n.tensor in final_of:
            name, pos = final_of[n.tensor]
            idx = list(n.indices)
            return N.Access(name, tuple(idx[:pos] + [N.Extent(r1)] + idx[pos:]) if idx
                            else (N.Extent(r1),))
        return None

    drop = {gi, *sums} | ({si} if not others else set())
    first = min(gi, si, *sums)
    x_def = next((i for i, e in enumerate(einsums) if e.tensor == x.tensor), None)
    before, after = [], []
    for i, e in enumerate(einsums):
        if i in drop:
            continue
        e = replace(e, rhs=map_expr(e.rhs, to_final),
                    filter=map_expr(e.filter, to_final) if e.filter is not None else None)
        if x_def is not None and i == x_def:
            before.extend(head)  # the initializations go just before the scores (Cascade 5)
            head = []
        (before if i < first else after).append(e)
    # a dropped max or sum that is itself an output is read from its final iterate
    outputs = {o.name: o for o in prog.outputs}
    for name in [g.tensor] + [einsums[ci].tensor for ci in sums]:
        if name in outputs:
            d = outputs[name]
            after.append(einsum(name, list(d.indices), to_final(N.Access(
                name, tuple(N.Var(v) for v in d.indices)))))
    return rebuild(prog, before + head + loop + corr + after)


def blockers(prog: Program) -> list[N.Einsum]:
    """Einsums that read normalised values whole (they keep a pass after the normaliser)."""
    found, _ = find(prog)
    return [prog.einsums[i] for f in found for i in f[6]]
