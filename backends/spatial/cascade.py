"""What the cost model needs to know about a cascade, computed once per program.

Everything here comes from the checked `Program` and the existing analyses:
- per-Einsum operation counts by class (`einsumc.analysis.counts`), kept as sums of
  monomials in the rank variables so that one evaluation is a handful of multiplications
  (never per element);
- the pass analysis of the sequence rank (`einsumc.analysis.passes`): which tensors are read
  in several passes (they must be buffered whole or spilled) and the pass of each Einsum;
- rank roles: the *sequence* rank (the analysed rank: `M`, with its partitions `m1`, `m0`),
  the *query* variable (`p`: a unit rank of the footprint analysis, never reduced) and the
  *batch* variables (other unit ranks, `b`, `h`);
- the dataflow inside one tile (same-tile producers) and across tiles (reads of a previous
  iterate), from the dataflow graph.
The result is plain data (no sympy), cheap to pickle into worker processes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...diagnostics import EinsumcError, error
from ...ir import nodes as N
from ...ir.program import Program

Terms = tuple[tuple[float, tuple[str, ...]], ...]   # sum of coeff * prod(extent[var])


@dataclass(frozen=True)
class Access:
    tensor: str
    axes: tuple[frozenset[str], ...]   # rank variables of each (non-iterative) index
    iterates: tuple[str, ...] = ()      # ("prev",), ("next",), ("final",) for iterative tensors


@dataclass(frozen=True)
class EinsumInfo:
    index: int
    name: str                           # the tensor it writes
    kind: str                           # init | recur | plain
    text: str
    line: int | None
    space: tuple[str, ...]
    reduced: frozenset[str]
    iter_var: str | None
    ops: dict[str, Terms]
    reads: tuple[Access, ...]
    write: Access
    view_of: str | None                 # a pure re-indexing of a cascade input (BK = K[...])
    same_tile_deps: tuple[int, ...]     # producers inside the same tile
    carried: tuple[tuple[str, int], ...]  # (tensor, producer) read at a previous iterate
    is_contraction: bool
    pass_no: int | None = None


@dataclass(frozen=True)
class RankInfo:
    name: str
    var: str
    literal: int | None                 # `rank E = 64`
    derived: bool                       # `rank M1 = M / M0`


@dataclass(frozen=True)
class TensorMeta:
    name: str
    kind: str                           # input | output | temp
    axes: tuple[str, ...]
    iter_axis: int | None

    @property
    def plain_axes(self) -> tuple[str, ...]:
        return tuple(v for k, v in enumerate(self.axes) if k != self.iter_axis)


@dataclass
class CascadeModel:
    name: str
    ranks: dict[str, RankInfo]
    rank_decls: tuple                   # the RankDecls (for evaluating derived extents)
    tensors: dict[str, TensorMeta]
    einsums: list[EinsumInfo]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    seq_rank: str | None
    seq_vars: frozenset[str]
    seq_root: str | None
    seq_leaf: str | None
    seq_outer: tuple[str, ...]          # partitions of the sequence rank above the leaf
    unit_vars: tuple[str, ...]
    passes: int
    tensor_passes: dict[str, int]
    tensor_pass_span: dict[str, tuple[int, int]]  # multi-pass tensor -> (first, last) pass
    iter_vars: frozenset[str]
    warnings: list[str] = field(default_factory=list)

    def var_rank(self, var: str) -> str:
        for r in self.ranks.values():
            if r.var == var:
                return r.name
        return var.upper()

    @property
    def fibers(self) -> list[str]:
        """Tensors read in more than one pass over the sequence rank (not inputs)."""
        return [t for t, k in self.tensor_passes.items()
                if k > 1 and self.tensors[t].kind != "input" and t in self.tensors]


# ----------------------------------------------------------------------------- building
_CACHE: dict[tuple, CascadeModel] = {}


def cascade_model(prog: Program) -> CascadeModel:
    """The (cached) cost-model view of a checked program."""
    key = (_name(prog), prog.source.text) if prog.source else ("<id>", id(prog))
    got = _CACHE.get(key)
    if got is None:
        got = _build(prog)
        _CACHE[key] = got
    return got


def _name(prog: Program) -> str:
    return prog.source.name if prog.source else "<spec>"


def _build(prog: Program) -> CascadeModel:
    import sympy

    from ...analysis import primary_rank
    from ...analysis.counts import einsum_counts
    from ...analysis.footprint import unit_vars as footprint_units
    from ...analysis.passes import analyze_passes
    from ...ir.printer import print_einsum

    ranks = {}
    for r in prog.ranks:
        lit = None
        if isinstance(r.extent, N.Num) and float(r.extent.value).is_integer():
            lit = int(r.extent.value)
        ranks[r.name] = RankInfo(r.name, r.var, lit, r.extent is not None and lit is None)
    tensors = {n: TensorMeta(n, t.kind, tuple(t.axes), t.iter_axis) for n, t in prog.tensors.items()}

    # pass analysis of the sequence rank
    try:
        rps = analyze_passes(prog)
    except EinsumcError:
        rps = {}
    seq = primary_rank(prog, rps) if rps else None
    if seq is not None:
        rp = rps[seq]
        rv = rp.vars
        leaf = rv.root
        outer: list[str] = []
        while rv.children.get(leaf):
            kids = rv.children[leaf]
            outer.extend(k for k in kids[:-1])
            leaf = kids[-1]
        seq_vars = frozenset(rv.vars)
        units = footprint_units(prog, rv.vars)
        tpasses = dict(rp.tensor_passes)
        einsum_pass = dict(rp.einsum_pass)
        passes = rp.passes
        span: dict[str, tuple[int, int]] = {}
        for i, p in einsum_pass.items():
            for t in rp.full_reads.get(i, ()):
                a, b = span.get(t, (p, p))
                span[t] = (min(a, p), max(b, p))
        root = rv.root
    else:
        seq_vars, leaf, outer, units, tpasses, einsum_pass, passes, span, root = (
            frozenset(), None, [], (), {}, {}, 0, {}, None)

    g = prog.graph()
    iterates: dict[tuple[str, int], tuple[str, ...]] = {}
    for u, v, d in g.nx.edges(data=True):
        if u.startswith("tensor:") and v.startswith("einsum:"):
            iterates[(u.partition(":")[2], g.nx.nodes[v]["index"])] = tuple(d.get("iterates") or ())

    syms = {r.var: sympy.Symbol(r.var, positive=True, integer=True) for r in prog.ranks}
    inputs = tuple(d.name for d in prog.inputs)
    outputs = tuple(d.name for d in prog.outputs)
    iter_vars = frozenset(prog.iterative_vars)
    einsums: list[EinsumInfo] = []
    for i, e in enumerate(prog.einsums):
        counts = einsum_counts(e, syms)
        for op, n in _folded_constants(e, syms).items():
            counts[op] = counts.get(op, 0) - n
        ops = {}
        for op, v in counts.items():
            terms = _terms(sympy.expand(v))
            if terms:
                ops[op] = terms
        reads = []
        for x in (e.rhs, e.filter):
            if x is None:
                continue
            for a in N.walk(x):
                if isinstance(a, N.Access):
                    info = prog.tensors[a.tensor]
                    axes = tuple(frozenset(N.value_vars(ix)) for k, ix in enumerate(a.indices)
                                 if k != info.iter_axis)
                    reads.append(Access(a.tensor, axes, iterates.get((a.tensor, i), ())))
        winfo = prog.tensors[e.tensor]
        waxes = tuple(frozenset({ix.var}) for k, ix in enumerate(e.indices) if k != winfo.iter_axis)
        write = Access(e.tensor, waxes)
        view = None
        if isinstance(e.rhs, N.Access) and not e.reduced and e.filter is None \
                and e.rhs.tensor in inputs and e.kind == "plain":
            view = e.rhs.tensor
        deps, carried = [], []
        for a in reads:
            defs = [j for j in prog.tensors[a.tensor].defined_by
                    if prog.einsums[j].kind != "init"]
            if not defs:
                continue
            if a.iterates == ("prev",):
                carried.append((a.tensor, defs[0]))
                continue
            if "prev" in a.iterates:
                carried.append((a.tensor, defs[0]))
            if defs[0] != i:
                deps.append(defs[0])
        is_con = "mac" in ops
        einsums.append(EinsumInfo(
            i, e.tensor, e.kind, print_einsum(e), e.span.line if e.span else None,
            tuple(e.space), frozenset(v for r in e.reduced for v in r.vars), e.iter_var, ops,
            tuple(reads), write, view, tuple(dict.fromkeys(deps)), tuple(dict.fromkeys(carried)),
            is_con, einsum_pass.get(i)))
    return CascadeModel(_name(prog), ranks, tuple(prog.ranks), tensors, einsums, inputs, outputs,
                        seq, seq_vars, root, leaf, tuple(outer), tuple(units), passes, tpasses,
                        span, iter_vars)




def _is_constant(x: N.Expr) -> bool:
    return not any(isinstance(n, (N.Var, N.Access)) for n in N.walk(x))


def _folded_constants(e: N.Einsum, syms) -> dict:
    """Ops of compile-time constant factors of a contraction (`/ sqrt(E)`), which the
    backend folds into an operand (as the NumPy backend does; FuseMax drops the factor):
    counted by the analysis once per output point, charged nothing here."""
    reds = list(e.reduced)
    if not reds or reds[0].op != "sum":
        return {}
    facs = N.factors(e.rhs)
    varying = [f for f in facs if not _is_constant(f[0])]
    consts = [f for f in facs if _is_constant(f[0])]
    if len(varying) < 2 or not consts:
        return {}
    size = 1
    for v in set(e.space) - set(reds[0].vars):
        size *= syms[v]
    out: dict = {}
    for _, r in consts:
        k = "div" if r else "mul"
        out[k] = out.get(k, 0) + size
    return out


def _terms(expr) -> Terms:
    import sympy
    out = []
    for mono, coeff in expr.as_coefficients_dict().items():
        c = float(coeff)
        if c == 0:
            continue
        vars_: list[str] = []
        for base, pw in mono.as_powers_dict().items():
            if base == 1 or base == sympy.Integer(1):
                continue
            if not isinstance(base, sympy.Symbol) or not pw.is_Integer or pw < 0:
                raise EinsumcError([error(f"operation count {expr} is not a polynomial in the "
                                          "rank extents")])
            vars_.extend([base.name] * int(pw))
        out.append((c, tuple(sorted(vars_))))
    return tuple(out)


def eval_terms(terms: Terms, ext: dict[str, float]) -> float:
    total = 0.0
    for c, vs in terms:
        x = c
        for v in vs:
            x *= ext[v]
        total += x
    return total


def prod(xs) -> float:
    return math.prod(xs)
