"""Buffer bounds and DRAM traffic that follow from the pass analysis.

Accounting rule for the minimum live footprint of a pass group (docs/analysis.md):
- *Units*: the query-side parallel ranks (the ranks of inputs that do not carry the rank
  of interest, never reduced: `b`, `h`, `p`) are processed one coordinate at a time; the
  footprint is given per unit ("per query") and is multiplied by the units in flight.
- A tensor whose fiber is read in several passes must keep its whole fiber live across
  them: its effective extent along the rank (the whole rank, or the span a `where` filter's
  affine bounds allow, e.g. `W` for a sliding window) times its other non-unit axes.
- Every other tensor touched by the group streams: one tile along the rank (the innermost
  partition, `M0`, or a single element when the rank is not partitioned), one iterate of an
  iterative rank (two for a running state: the previous and the new iterate), the full
  extent of other ranks (`E`, `F`).
The minimum footprint of the cascade is the largest over its pass groups. The alternative
to buffering a multi-pass fiber is spilling it: one write and one more read per extra pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ..ir import nodes as N
from ..ir.program import Program
from ..ir.symbolic import to_sympy
from .counts import extent_symbols
from .passes import RankPasses

DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8}


@dataclass
class Footprint:
    """Per-group live footprint (elements) split into per-unit and shared parts."""

    unit_vars: tuple[str, ...]
    per_group_unit: list[sympy.Expr]     # elements per unit in flight, per pass group
    per_group_shared: list[sympy.Expr]   # elements independent of the units, per group
    buffered_fibers: dict[str, sympy.Expr]  # multi-pass tensor -> fiber elements per unit
    effective_extent: dict[str, sympy.Expr]  # tensor -> extent along the rank (filters)
    per_group_fibers: list[sympy.Expr] = None  # per-unit elements of buffered fibers, per group
    per_group_fibers_shared: list[sympy.Expr] = None  # shared elements of buffered fibers
    query_vars: tuple[str, ...] = ()  # the units whose count sets the re-reads of K and V

    @property
    def minimum(self) -> sympy.Expr:
        """The largest group footprint with one unit in flight (elements)."""
        vals = [sympy.simplify(u + s) for u, s in zip(self.per_group_unit, self.per_group_shared)]
        return sympy.Max(*vals) if len(vals) > 1 else (vals[0] if vals else sympy.Integer(0))


def unit_vars(prog: Program, rank_vars: frozenset[str]) -> tuple[str, ...]:
    reduced = {v for e in prog.einsums for r in e.reduced for v in r.vars}
    out: list[str] = []
    for d in prog.inputs:
        if set(d.indices) & rank_vars:
            continue
        for v in d.indices:
            if v not in reduced and v not in out and v not in rank_vars:
                out.append(v)
    return tuple(out)


# ----------------------------------------------------------------------------- filters
def _linear(x: N.Expr, ext) -> sympy.Expr:
    """A predicate operand as a sympy expression (rank variables become symbols)."""
    if isinstance(x, N.Var):
        return sympy.Symbol("v_" + x.name, integer=True)
    if isinstance(x, N.Num):
        return sympy.Integer(int(x.value)) if x.value == int(x.value) else sympy.Float(x.value)
    if isinstance(x, N.Extent):
        return ext[x.name.lower()] if x.name.lower() in ext else sympy.Symbol(x.name)
    if isinstance(x, N.Param):
        return sympy.Symbol(x.name, real=True)
    if isinstance(x, N.Unary) and x.op == "-":
        return -_linear(x.operand, ext)
    if isinstance(x, N.BinOp) and x.op in "+-*":
        a, b = _linear(x.left, ext), _linear(x.right, ext)
        return a + b if x.op == "+" else a - b if x.op == "-" else a * b
    return to_sympy(x)


def _dnf(p: N.Expr) -> list[list[N.BinOp]]:
    if isinstance(p, N.BinOp) and p.op == "or":
        return _dnf(p.left) + _dnf(p.right)
    if isinstance(p, N.BinOp) and p.op == "and":
        return [a + b for a in _dnf(p.left) for b in _dnf(p.right)]
    if isinstance(p, N.BinOp) and p.op in N.CMP_OPS:
        return [[p]]
    return [[]]  # `not`: no bound can be read off


def filter_extent(pred: N.Expr, var: str, full: sympy.Expr, ext) -> sympy.Expr:
    """The most points of `var` a filter keeps for fixed other variables (at most `full`)."""
    v = sympy.Symbol("v_" + var, integer=True)
    total = sympy.Integer(0)
    for conj in _dnf(pred):
        lo, hi = [sympy.Integer(0)], [full - 1]
        for c in conj:
            try:
                d = sympy.expand(_linear(c.left, ext) - _linear(c.right, ext))
            except Exception:
                continue
            coeff = d.coeff(v)
            if coeff not in (1, -1) or (d - coeff * v).has(v):
                continue
            rest = d - coeff * v  # coeff*v + rest  op  0
            op = c.op if coeff == 1 else {"<": ">", "<=": ">=", ">": "<", ">=": "<=",
                                          "==": "==", "!=": "!="}[c.op]
            bound = -rest * coeff  # v op bound
            if op == "<":
                hi.append(bound - 1)
            elif op == "<=":
                hi.append(bound)
            elif op == ">":
                lo.append(bound + 1)
            elif op == ">=":
                lo.append(bound)
            elif op == "==":
                lo.append(bound)
                hi.append(bound)
        best = full
        for h in hi:
            for low in lo:
                span = sympy.simplify(h - low + 1)
                if not span.free_symbols & {s for s in span.free_symbols if s.name.startswith("v_")}:
                    best = span if best == full else sympy.Min(best, span)
        total += best
    return sympy.Min(full, total) if total != full else full


def effective_extents(prog: Program, root_var: str, ext) -> dict[str, sympy.Expr]:
    """Each tensor's extent along the rank's own variable, narrowed by filters."""
    full = ext[root_var]
    eff: dict[str, sympy.Expr] = {d.name: full for d in prog.inputs}

    def of(x: N.Expr) -> sympy.Expr | None:  # None: present everywhere (a constant)
        if isinstance(x, N.Access):
            return eff.get(x.tensor, full)
        kids = [of(c) for c in N.children(x)] if not isinstance(x, N.Access) else []
        kids = [k for k in kids if k is not None]
        if not kids:
            return None
        union = (isinstance(x, N.BinOp) and x.op == "+") or (isinstance(x, N.Call)
                                                            and x.fn in ("max", "min"))
        return sympy.Max(*kids) if union and len(kids) > 1 else (
            sympy.Min(*kids) if len(kids) > 1 else kids[0])

    for e in prog.einsums:
        got = of(e.rhs)
        got = full if got is None else got
        if e.filter is not None and root_var in N.value_vars(e.filter):
            got = sympy.Min(got, filter_extent(e.filter, root_var, full, ext))
        eff[e.tensor] = sympy.simplify(got)
    return eff


# ----------------------------------------------------------------------------- footprints
def footprint(prog: Program, rp: RankPasses) -> Footprint:
    ext = extent_symbols(prog)
    rv = rp.vars
    units = unit_vars(prog, rv.vars)
    eff = effective_extents(prog, rv.root, ext)
    iter_vars = {e.iter_var for e in prog.einsums if e.kind == "recur"}
    # the innermost partition of the rank: its streaming tile
    leaf = rv.root
    while rv.children.get(leaf):
        leaf = rv.children[leaf][-1]
    multi = {t for t, k in rp.tensor_passes.items() if k > 1}

    # the query ranks: units that the rank's own inputs (K, V) do not carry. A region
    # with a query rank grows with the queries in flight; one without (a K/V tile, which
    # may carry batch and head ranks) is shared by them.
    r_inputs = [d for d in prog.inputs if set(d.indices) & rv.vars]
    query = {u for u in units if not any(u in d.indices for d in r_inputs)} or set(units)

    def region(name: str, axes_idx: list[tuple[str | None, set[str]]], buffered: bool) -> tuple:
        """(elements per unit, shared elements) of one tensor's live region."""
        size = sympy.Integer(1)
        has_unit = False
        r_done = False
        for axis, vs in axes_idx:
            if vs & set(units):
                has_unit = has_unit or bool(vs & query)
                continue
            rvs = vs & rv.vars
            if rvs:
                if r_done:
                    continue
                if buffered:
                    size *= eff.get(name, ext[rv.root])
                    r_done = True
                else:  # stream: one tile of the innermost partition, or one element
                    free = [v for v in rvs if v not in iter_vars]
                    if leaf != rv.root and leaf in free:
                        size *= ext[leaf]
                continue
            free = [v for v in vs if v not in iter_vars]
            for v in free:
                size *= ext[v]
        return (size, 0) if has_unit else (0, size)

    groups = rp.groups()
    pass_of = rp.einsum_pass
    per_unit, shared, fibers, fibers_shared = [], [], [], []
    first_last: dict[str, tuple[int, int]] = {}
    for i, p in pass_of.items():
        for t in rp.full_reads.get(i, ()):
            if t in multi:
                a, b = first_last.get(t, (p, p))
                first_last[t] = (min(a, p), max(b, p))
    buffered_fibers = {}
    for g, ids in enumerate(groups):
        pnum = pass_of[ids[0]]
        seen: dict[str, tuple] = {}
        for i in ids:
            e = prog.einsums[i]
            info = prog.tensors[e.tensor]
            axes = [(v, {v}) for k, v in enumerate(info.axes) if k != info.iter_axis]
            seen[e.tensor] = region(e.tensor, axes, e.tensor in multi)
            if info.iter_axis is not None:  # previous and new iterate of a running state
                seen[e.tensor] = tuple(2 * x for x in seen[e.tensor])
            for x in (e.rhs, e.filter):
                if x is None:
                    continue
                for a in N.walk(x):
                    if isinstance(a, N.Access) and a.tensor not in seen:
                        ainfo = prog.tensors[a.tensor]
                        axes = [(ainfo.axes[k] if k < len(ainfo.axes) else None,
                                 N.value_vars(ix)) for k, ix in enumerate(a.indices)
                                if k != ainfo.iter_axis]
                        seen[a.tensor] = region(a.tensor, axes, a.tensor in multi)
        for t, (a, b) in first_last.items():  # fibers kept live through this pass
            if a <= pnum <= b and t not in seen:
                info = prog.tensors[t]
                seen[t] = region(t, [(v, {v}) for v in info.axes], True)
        for t in multi:
            if t in seen:
                buffered_fibers[t] = seen[t][0] + seen[t][1]
        fibers.append(sympy.simplify(sum(seen[t][0] for t in multi if t in seen)))
        fibers_shared.append(sympy.simplify(sum(seen[t][1] for t in multi if t in seen)))
        per_unit.append(sympy.simplify(sum(u for u, _ in seen.values())))
        shared.append(sympy.simplify(sum(s for _, s in seen.values())))
    return Footprint(units, per_unit, shared, buffered_fibers, eff, fibers, fibers_shared,
                     tuple(v for v in units if v in query))


@dataclass
class Traffic:
    compulsory_bytes: sympy.Expr
    spill_bytes: sympy.Expr  # extra traffic if every multi-pass fiber is spilled


def tensor_bytes(prog: Program, name: str, ext) -> sympy.Expr:
    info = prog.tensors[name]
    size = sympy.Integer(DTYPE_BYTES.get(info.dtype, 4))
    for k, v in enumerate(info.axes):
        if k != info.iter_axis:
            size *= ext[v]
    return size


def traffic(prog: Program, rp: RankPasses) -> Traffic:
    ext = extent_symbols(prog)
    comp = sum((tensor_bytes(prog, d.name, ext) for d in prog.inputs + prog.outputs),
               sympy.Integer(0))
    spill = sympy.Integer(0)
    inputs = {d.name for d in prog.inputs}
    for t, k in rp.tensor_passes.items():
        if k > 1:
            spill += (k - 1 + (0 if t in inputs else 1)) * tensor_bytes(prog, t, ext)
    return Traffic(sympy.expand(comp), sympy.expand(spill))


def best_schedule(prog: Program, rp: RankPasses, fp: Footprint, capacity: int,
                  values: dict[str, int], subs: dict | None = None) -> dict:
    """See `_best_schedule`; an unbound extent or param is reported, not raised."""
    try:
        return _best_schedule(prog, rp, fp, capacity, values, subs)
    except ValueError as exc:
        return {"capacity_bytes": capacity, "plans": {}, "best": None,
                "error": f"{exc}: give their values (--shape or --param)"}


def _best_schedule(prog: Program, rp: RankPasses, fp: Footprint, capacity: int,
                   values: dict[str, int], subs: dict | None = None) -> dict:
    """The cheaper of buffering the multi-pass fibers or spilling them, for `capacity` bytes.

    Units (queries) are processed in tiles as large as the buffer allows; inputs without the
    unit ranks (K, V) are read once per tile of units.
    """
    ext = extent_symbols(prog)
    if subs is None:
        subs = {sympy.Symbol(k, integer=True, positive=True): v for k, v in values.items()}
        subs.update({sympy.Symbol(k, real=True): v for k, v in values.items()})

    def num(x) -> float:
        v = sympy.sympify(x).subs(subs)
        if v.free_symbols:
            raise ValueError("unbound: " + ", ".join(sorted(str(s) for s in v.free_symbols)))
        return float(v)

    word = 4
    qvars = fp.query_vars or fp.unit_vars
    units_total = math.prod(int(num(ext[v])) for v in qvars) if qvars else 1
    unit_inputs = [d.name for d in prog.inputs if set(d.indices) & set(qvars)]
    other_inputs = [d.name for d in prog.inputs if d.name not in unit_inputs]
    base = sum(num(tensor_bytes(prog, t, ext)) for t in unit_inputs) + sum(
        num(tensor_bytes(prog, d.name, ext)) for d in prog.outputs)
    reread = sum(num(tensor_bytes(prog, t, ext)) for t in other_inputs)
    plans = {}
    n = len(fp.per_group_unit)
    for plan in ("buffer", "spill"):
        unit_b = shared_b = 0.0
        for u, sh, f, fs in zip(fp.per_group_unit, fp.per_group_shared,
                                fp.per_group_fibers or [0] * n,
                                fp.per_group_fibers_shared or [0] * n):
            spill = plan == "spill"  # spilled fibers stream instead of staying on chip
            unit_b = max(unit_b, (num(u) - (num(f) if spill else 0)) * word)
            shared_b = max(shared_b, (num(sh) - (num(fs) if spill else 0)) * word)
        if capacity < shared_b + unit_b or (plan == "spill" and not fp.buffered_fibers):
            continue
        tile = units_total if unit_b == 0 else int(min(units_total, (capacity - shared_b) // unit_b))
        tiles = math.ceil(units_total / max(1, tile))
        t = base + reread * tiles
        if plan == "spill":
            t += num(traffic(prog, rp).spill_bytes)
        plans[plan] = {"units_in_flight": tile, "dram_bytes": int(t)}
    best = min(plans, key=lambda k: plans[k]["dram_bytes"]) if plans else None
    return {"capacity_bytes": capacity, "plans": plans, "best": best}
