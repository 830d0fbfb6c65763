"""Which rank variables traverse an original rank, and when a set of them covers it all.

A rank `M` may be traversed by its own variable `m` and, after partitioning through an
index expression such as `K[e, m1*M0 + m0]`, by `m1` and `m0` together. `RankVars`
records that structure (`m -> (m1, m0)`), so that "every `m1` and every `m0`" counts as
one whole traversal of `M`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import nodes as N
from ..ir.program import Program


@dataclass(frozen=True)
class RankVars:
    """The variables that traverse rank `rank` and how they partition it."""

    rank: str
    root: str
    vars: frozenset[str]
    children: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    def covers(self, have: set[str] | frozenset[str], var: str | None = None) -> bool:
        """Whether the variables `have` together span the whole rank (or `var`'s part)."""
        v = self.root if var is None else var
        if v in have:
            return True
        kids = self.children.get(v)
        return bool(kids) and all(self.covers(have, k) for k in kids)


def _accesses(prog: Program):
    for e in prog.einsums:
        for x in (e.rhs, e.filter):
            if x is not None:
                for a in N.walk(x):
                    if isinstance(a, N.Access):
                        yield e, a


def rank_vars(prog: Program, rank: str) -> RankVars:
    """The closure of variables that traverse `rank` (its own and its partitions')."""
    root = prog.rank(rank).var
    found = {root}
    children: dict[str, tuple[str, ...]] = {}
    changed = True
    while changed:
        changed = False
        for _, a in _accesses(prog):
            info = prog.tensors[a.tensor]
            for k, ix in enumerate(a.indices):
                if k == info.iter_axis or k >= len(info.axes):
                    continue
                axis = info.axes[k]
                if axis not in found:
                    continue
                # outer partitions (scaled: `m1*M0`) first, the innermost (`m0`) last
                scaled = {v.name for n in N.walk(ix) if isinstance(n, N.BinOp) and n.op == "*"
                          for v in N.walk(n) if isinstance(v, N.Var)}
                if any(isinstance(n, N.BinOp) and n.op in ("//", "%") for n in N.walk(ix)):
                    continue  # reading a partition back (`BY[m // M0, m % M0]`) splits nothing
                vs = tuple(sorted(N.value_vars(ix), key=lambda v: (v not in scaled, v)))
                if not vs or vs == (axis,):
                    continue
                new = [v for v in vs if v not in found]
                if not new:
                    continue  # e.g. `BO[f, p // P0, p % P0]` reading a partition back
                found.update(new)
                changed = True
                if len(vs) > 1 or vs[0] != axis:
                    children.setdefault(axis, vs)
    return RankVars(rank, root, frozenset(found), children)


def candidate_ranks(prog: Program) -> list[str]:
    """Ranks that some Einsum reduces, iterates or partitions (original ranks only)."""
    touched: set[str] = set()
    for e in prog.einsums:
        for r in e.reduced:
            touched.update(r.vars)
        if e.kind == "recur":
            touched.add(e.iter_var)
    out = []
    by_var = {r.var: r.name for r in prog.ranks}
    derived = set()
    for r in prog.ranks:
        rv = rank_vars(prog, r.name)
        for kids in rv.children.values():
            derived.update(kids)
    for r in prog.ranks:
        if r.var in derived:
            continue  # a part of another rank (M1, M0 of M): reported under that rank
        rv = rank_vars(prog, r.name)
        if rv.vars & touched:
            out.append(r.name)
    del by_var
    return out
