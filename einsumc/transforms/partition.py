"""partition: split a rank into tiles, `M -> M1, M0` (FuseMax Eq. 39).

    before                                   after `partition:M=64`
    rank M, P                                rank M, P, M0 = 64, M1 = ceil(M / M0)
    QK[m, p] = Q[e, p] * K[e, m]             BK[e, m1, m0] = K[e, m1 * M0 + m0]
    GM[p] = QK[m, p] :: max(m)               QK[m1, m0, p] = Q[e, p] * BK[e, m1, m0]
                                             GM[p] = QK[m1, m0, p] :: max(m1, m0)

Every tensor with an axis of the rank gets two axes (tile, offset in tile); each input read
at that axis gets a tiled copy (`BK`); a rank variable used as a value or in a filter
becomes `m1 * M0 + m0`; reductions over `m` reduce `m1, m0`. `M1 = ceil(M / M0)` accepts
any `M`: the last tile's points past `M` are absent (they read outside `K`), and an
Einsum whose value would be present there anyway (a bias computed from `m`) gets the
filter `m1 * M0 + m0 < M`, so the result is unchanged.

An output keeps its interface: it is computed tiled under a new name and read back,
`AV[f, p] = BAV[f, p // P0, p % P0]` (a quasi-affine read). Legality: the rank must not be
read at a shifted index of an intermediate tensor (`T[m + 1]` would cross tiles) or be
iterative.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import nodes as N
from ..ir.program import Program
from .base import einsum, fresh, map_expr, rebuild, reads, refuse, used_names

NAME = "partition"


def partition(prog: Program, rank: str, tile: int) -> Program:
    if rank not in {r.name for r in prog.ranks}:
        raise refuse(prog, NAME, f"no rank '{rank}'; ranks: "
                     + ", ".join(r.name for r in prog.ranks), None)
    if not isinstance(tile, int) or tile < 1:
        raise refuse(prog, NAME, f"the tile size must be a positive integer, got {tile!r}",
                     prog.rank(rank).span)
    decl = prog.rank(rank)
    v = decl.var
    names = used_names(prog)
    r0 = fresh(names, rank + "0")
    r1 = fresh(names, rank + "1")
    v0, v1 = r0.lower(), r1.lower()
    if v0 in names or v1 in names:
        raise refuse(prog, NAME, f"the variables {v1}, {v0} are taken", decl.span)
    names |= {v0, v1}
    flat = N.BinOp("+", N.BinOp("*", N.Var(v1), N.Extent(r0)), N.Var(v0))
    inputs_with = {d.name: d.indices.index(v) for d in prog.inputs if v in d.indices}
    split = {n for n, info in prog.tensors.items()
             if info.kind != "input" and v in info.axes}
    # an output keeps its interface: it is computed tiled as `B<name>` and read back by
    # `O[.., p, ..] = BO[.., p // P0, p % P0, ..]`
    renamed = {o.name: fresh(names, "B" + o.name) for o in prog.outputs if v in o.indices}

    copies: dict[str, str] = {}
    new: list[N.Einsum] = []
    for d in prog.inputs:
        if d.name not in inputs_with:
            continue
        plain_reads = any(isinstance(a.indices[inputs_with[d.name]], N.Var)
                          and a.indices[inputs_with[d.name]].name == v
                          for e in prog.einsums for a in reads(e) if a.tensor == d.name)
        if not plain_reads:
            continue
        copy = fresh(names, "B" + d.name)
        copies[d.name] = copy
        idx = []
        for ax in d.indices:
            idx.extend([v1, v0] if ax == v else [ax])
        src = N.Access(d.name, tuple(flat if ax == v else N.Var(ax) for ax in d.indices))
        new.append(einsum(copy, idx, src))

    masked = set(copies.values())  # tensors absent past the end of the rank

    def rewrite_access(a: N.Access) -> N.Expr | None:
        info = prog.tensors[a.tensor]
        if a.tensor in copies:
            k = inputs_with[a.tensor]
            ix = a.indices[k]
            if isinstance(ix, N.Var) and ix.name == v:
                out = []
                for j, x in enumerate(a.indices):
                    out.extend([N.Var(v1), N.Var(v0)] if j == k else [x])
                return N.Access(copies[a.tensor], tuple(out))
            return None
        if a.tensor in split:
            k = info.axes.index(v)
            ix = a.indices[k]
            if not (isinstance(ix, N.Var) and ix.name == v):
                return None  # reported below
            out = []
            for j, x in enumerate(a.indices):
                out.extend([N.Var(v1), N.Var(v0)] if j == k else [x])
            return N.Access(renamed.get(a.tensor, a.tensor), tuple(out))
        return None

    for e in prog.einsums:
        for a in reads(e):
            info = prog.tensors[a.tensor]
            if a.tensor in split:
                ix = a.indices[info.axes.index(v)]
                if not (isinstance(ix, N.Var) and ix.name == v):
                    raise refuse(prog, NAME, f"'{a.tensor}' is read at a shifted index of rank "
                                 f"{rank}; a partitioned rank cannot be read across tiles",
                                 a.span)

    def rewrite(x: N.Expr) -> N.Expr:
        def fn(n):
            if isinstance(n, N.Access):
                return rewrite_access(n)
            return None
        # first the accesses (whose plain `m` indices become two indices), then values
        x = map_expr(x, fn)

        def values(n):
            if isinstance(n, N.Var) and n.name == v:
                return flat
            return None
        return map_expr(x, values)

    for e in prog.einsums:
        idx = []
        for ix in e.indices:
            if ix.var == v:
                if ix.kind != "plain":
                    raise refuse(prog, NAME, f"rank {rank} is iterative here; partition the "
                                 "rank before building a recurrence over it", ix.span)
                idx.extend([N.Index(v1), N.Index(v0)])
            else:
                idx.append(ix)
        anns = tuple(replace(r, vars=tuple(x for y in r.vars for x in ((v1, v0) if y == v else (y,))))
                     for r in e.annotations)
        rhs = rewrite(e.rhs)
        filt = rewrite(e.filter) if e.filter is not None else None
        ne = replace(e, tensor=renamed.get(e.tensor, e.tensor), indices=tuple(idx), rhs=rhs,
                     annotations=anns, filter=filt)
        if v in e.space:
            if _present_past_end(rhs, masked):  # e.g. a bias computed from `m`
                bound = N.BinOp("<", flat, N.Extent(rank))
                ne = replace(ne, filter=bound if filt is None else N.BinOp("and", filt, bound))
            masked.add(e.tensor)
        new.append(ne)
    for o in prog.outputs:
        if o.name in renamed:
            idx = []
            for ax in o.indices:
                if ax == v:
                    idx += [N.BinOp("//", N.Var(v), N.Extent(r0)),
                            N.BinOp("%", N.Var(v), N.Extent(r0))]
                else:
                    idx.append(N.Var(ax))
            new.append(einsum(o.name, list(o.indices), N.Access(renamed[o.name], tuple(idx))))
    ranks = list(prog.ranks)
    pos = ranks.index(decl) + 1
    ranks[pos:pos] = [N.RankDecl(r0, N.Num(float(tile))),
                      N.RankDecl(r1, N.Call("ceil", (N.BinOp("/", N.Extent(rank), N.Extent(r0)),)))]
    return rebuild(prog, new, ranks)


def _present_past_end(x: N.Expr, masked: set[str]) -> bool:
    """Whether the value can be present at points past the end of the rank."""
    if isinstance(x, N.Access):
        return x.tensor not in masked
    if isinstance(x, (N.Num, N.Var, N.Extent, N.Param)):
        return True
    kids = N.children(x)
    union = (isinstance(x, N.BinOp) and x.op == "+") or (isinstance(x, N.Call)
                                                        and x.fn in ("max", "min"))
    parts = [_present_past_end(k, masked) for k in kids]
    return any(parts) if union else all(parts)

