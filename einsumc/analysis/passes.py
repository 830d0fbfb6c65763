"""Pass analysis: the least number of passes any implementation makes over a rank.

FuseMax (§III-A) defines a pass over a fiber of a rank as a traversal of every element of
that fiber; a cascade needs another pass whenever an element must be read again after
every other element was read, "for all mappings of the cascade". That happens exactly
when an Einsum reads a tensor's whole fiber *after* (transitively) a reduction that
needed the whole fiber of that same tensor to complete. The rules (`fusemax.md` §3.4):

1. *Coverage*: `cov(T)` is the set of the rank's variables that tensor `T` no longer
   carries and whose whole extent it summarizes: reduced away by its producer, inherited
   from what it reads, or read at a final iterate (`RNV[f, M1, p]`). A recurrence step
   (`m1+1`) is not a reduction.
2. *Completion point*: an Einsum whose output covers the whole rank and where that
   reduction happens: it reduces a variable of the rank, or reads a final iterate
   (Cascade 4's `GM`, `SD` and `AV`; Cascade 5's final `AV`). The final iterate of a
   recurrence over the rank (`RM[M1, p]`) is complete too: an Einsum that reads it
   depends on the whole loop, as on a completion point at the recurrence.
3. *Pass of an Einsum*: at least the pass of everything it depends on; and one more than
   a completion point it depends on when it reads a whole fiber that the completing
   traversal already visited — the fiber itself, or one it was computed from (`SN` from
   `QK`): its traversal starts only after every element was read, so it revisits them.
   This is FuseMax's read-read dependency; a fiber that traversal never touched
   (`Z = Y * C[k]` after `Y = A[k] * B[k]`) is read in a later sweep but not revisited.
4. The cascade's count is the largest pass of an Einsum that reads a whole fiber.

The counts depend on the cascade alone (no mapping, no extents), so they bound every
fusion and every schedule a backend may choose.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from ..diagnostics import EinsumcError, error
from ..ir import nodes as N
from ..ir.graph import build_graph, einsum_node
from ..ir.program import Program
from .ranks import RankVars, candidate_ranks, rank_vars


@dataclass(frozen=True)
class Chain:
    """Why an Einsum is in a later pass: `reader` re-reads `tensor`'s fiber after
    `completion` consumed the earlier read by `first_reader`."""

    tensor: str
    first_reader: int
    completion: int
    reader: int
    source: str = ""  # the fiber the first reader read, when `tensor` was computed from it


@dataclass
class RankPasses:
    """The pass analysis of one rank."""

    rank: str
    vars: RankVars
    passes: int
    einsum_pass: dict[int, int]
    full_reads: dict[int, tuple[str, ...]]
    completions: tuple[int, ...]
    chains: list[Chain] = field(default_factory=list)
    tensor_passes: dict[str, int] = field(default_factory=dict)
    einsum_sweep: dict[int, int] = field(default_factory=dict)

    def groups(self) -> list[list[int]]:
        """Fusion groups: Einsums that one traversal of the rank can run together.

        Einsums of different passes never fuse. Within a pass, a whole-fiber read that needs
        a completed reduction it does not revisit (`Z = Y * C[k]` after `Y = A[k] * B[k]`)
        still starts a new traversal (a sweep); groups follow sweeps, which refine passes.
        """
        out: dict[tuple[int, int], list[int]] = {}
        for i, p in sorted(self.einsum_pass.items()):
            out.setdefault((self.einsum_sweep.get(i, p), p), []).append(i)
        return [out[k] for k in sorted(out)]




def analyze_rank(prog: Program, rank: str, graph=None) -> RankPasses:
    rv = rank_vars(prog, rank)
    g = graph if graph is not None else build_graph(prog)
    dag = g.dependency_graph()
    einsums = prog.einsums

    def axes_vars(name: str) -> set[str]:
        info = prog.tensors[name]
        return {v for k, v in enumerate(info.axes) if k != info.iter_axis}

    cov: dict[str, set[str]] = {d.name: set() for d in prog.inputs}
    complete_t: dict[str, bool] = {d.name: False for d in prog.inputs}
    full_reads: dict[int, tuple[str, ...]] = {}
    completions: list[int] = []
    for i, e in enumerate(einsums):
        reads = list(N.reads(e))
        c: set[str] = set()
        for a in reads:
            c |= cov.get(a.tensor, set())
            info = prog.tensors[a.tensor]
            if info.iter_axis is not None and isinstance(a.indices[info.iter_axis], N.Extent):
                c.add(info.axes[info.iter_axis])  # the final iterate summarizes its rank
        for r in e.reduced:
            c |= set(r.vars) & rv.vars
        out_axes = axes_vars(e.tensor) if e.kind != "init" else set()
        c = (c & rv.vars) - out_axes
        prev = cov.get(e.tensor, set()) if e.kind == "recur" else set()
        cov[e.tensor] = c | prev
        done = rv.covers(cov[e.tensor])
        # the reduction over the rank completes here: this Einsum reduces (part of) it, or
        # reads a final iterate; merely reading a complete value does not complete anything
        performs = bool({v for r in e.reduced for v in r.vars} & rv.vars) or any(
            prog.tensors[a.tensor].iter_axis is not None
            and isinstance(a.indices[prog.tensors[a.tensor].iter_axis], N.Extent)
            for a in reads)
        if done and performs:
            completions.append(i)
        complete_t[e.tensor] = done
        space = set(e.space) | set(e.lhs_vars)
        fr = []
        for a in reads:
            info = prog.tensors[a.tensor]
            axis_vars = set()
            for k, ix in enumerate(a.indices):
                if k == info.iter_axis:
                    continue
                axis_vars |= N.value_vars(ix) & rv.vars
            if axis_vars and rv.covers(axis_vars & space) and a.tensor not in fr:
                fr.append(a.tensor)
        full_reads[i] = tuple(fr)

    anc = {i: {dag.nodes[n]["index"] for n in nx.ancestors(dag, einsum_node(i))
               if n.startswith("einsum:")} for i in range(len(einsums))}
    comp_set = set(completions)
    # A final iterate that covers the rank (`RM[M1, p]` after a loop over every tile) is
    # complete only once its recurrence has run over the whole rank: reading it depends on
    # that "virtual" completion, located at the recurrence. Reads of other iterates
    # (`RM[m1+1, p]` inside the loop) do not.
    recur_of = {e.tensor: i for i, e in enumerate(einsums) if e.kind == "recur"}
    final_reads: dict[int, set[int]] = {}
    for i in g.topo_einsums():
        got: set[int] = set()
        for a in N.reads(einsums[i]):
            info = prog.tensors[a.tensor]
            if info.iter_axis is not None and isinstance(a.indices[info.iter_axis], N.Extent) \
                    and rv.covers(cov.get(a.tensor, set()) | {info.iter_var}):
                got.add(recur_of[a.tensor])
        for j in anc[i]:
            got |= final_reads.get(j, set())
        final_reads[i] = got
    # sources[T]: T and every fiber it was computed from through whole-fiber reads
    sources: dict[str, set[str]] = {d.name: {d.name} for d in prog.inputs}
    for i in g.topo_einsums():
        t = einsums[i].tensor
        src = sources.setdefault(t, {t})
        for r in full_reads[i]:
            src |= sources.get(r, {r})
    cone_reads = {c: set().union(*(set(full_reads[j]) for j in anc[c] | {c}))
                  for c in set(completions) | {j for v in final_reads.values() for j in v}}
    passes: dict[int, int] = {}
    chains: list[Chain] = []
    order = g.topo_einsums()
    sweeps: dict[int, int] = {}
    for i in order:
        p = 1
        sw = 1
        for j in anc[i]:
            p = max(p, passes.get(j, 1))
            sw = max(sw, sweeps.get(j, 1))
        if full_reads[i]:  # a traversal after a completed reduction is a new sweep
            for c in (anc[i] & comp_set) | final_reads[i]:
                sw = max(sw, sweeps[c] + 1)
        sweeps[i] = sw
        best = None
        # A traversal of a whole fiber that needs a completed reduction starts after the
        # traversal that completed it. It is a new pass when it revisits what that traversal
        # visited: the fiber itself, or one it was computed from.
        for c in sorted((anc[i] & comp_set) | final_reads[i]):
            seen = cone_reads[c]
            for t in full_reads[i]:
                shared = sources[t] & seen
                if shared and passes[c] + 1 > p:
                    p = passes[c] + 1
                    first = [j for j in sorted(anc[c] | {c}) if set(full_reads[j]) & shared]
                    j = (first or [c])[-1]
                    src = t if t in full_reads[j] else sorted(set(full_reads[j]) & shared)[0] \
                        if set(full_reads[j]) & shared else t
                    best = Chain(t, j, c, i, src)
        passes[i] = p
        if best is not None:
            chains.append(best)
    readers = [i for i in range(len(einsums)) if full_reads[i]]
    total = max((passes[i] for i in readers), default=0)
    touched: dict[str, set[int]] = {}  # the passes that read a fiber whole
    for i in readers:
        for t in full_reads[i]:
            touched.setdefault(t, set()).add(passes[i])
    for i, e in enumerate(einsums):  # ... or write it: a fiber written in one pass and read
        if e.kind == "plain" and e.tensor in touched:  # in a later one stays live across
            if rv.covers(axes_vars(e.tensor) & rv.vars):
                touched[e.tensor].add(passes[i])
    tensor_passes = {t: len(s) for t, s in sorted(touched.items())}
    return RankPasses(rank, rv, total, passes, full_reads, tuple(completions),
                      sorted(chains, key=lambda c: c.reader), tensor_passes, sweeps)


def analyze_passes(prog: Program, rank: str | None = None) -> dict[str, RankPasses]:
    """Pass analysis for `rank`, or for every rank that is reduced, iterated or partitioned."""
    g = build_graph(prog)
    if rank is not None:
        names = {r.name for r in prog.ranks}
        if rank not in names:
            raise EinsumcError([error(f"--rank {rank}: no such rank; ranks: "
                                      + ", ".join(sorted(names)))], prog.source)
        if rank not in candidate_ranks(prog) and not _touched(prog, rank):
            raise EinsumcError([error(f"--rank {rank}: no Einsum reduces, iterates or partitions "
                                      f"rank {rank}, so there is nothing to count", 
                                      prog.rank(rank).span)], prog.source)
        return {rank: analyze_rank(prog, rank, g)}
    return {r: analyze_rank(prog, r, g) for r in candidate_ranks(prog)}


def _touched(prog: Program, rank: str) -> bool:
    rv = rank_vars(prog, rank)
    for e in prog.einsums:
        if any(set(r.vars) & rv.vars for r in e.reduced) or (
                e.kind == "recur" and e.iter_var in rv.vars):
            return True
    return bool(rv.children)
