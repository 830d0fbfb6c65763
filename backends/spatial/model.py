"""The cost model: a cascade, an architecture and a mapping -> schedule, latency,
utilization, DRAM traffic, buffer occupancy and energy (docs/spatial.md §4).

The model works per tile and per epoch, never per element: every quantity is a product of
extents, so one evaluation costs the same at 1K and at 1M tokens.

1. *Extents.* Shapes bind the symbolic ranks; a workload may re-bind a fixed extent
   (`E = 128` for XLM) and the mapping sizes partition ranks (`M0 = rows`).
2. *Binding.* Each Einsum runs on one array (mapping, or derived: contractions and
   tile-parallel work whose operands live in the 2D array go to the 2D array, the rest to
   the 1D array); the op table of the array must cover the Einsum's ops.
3. *Compute.* Cycles of an Einsum = time steps x cycles per point. Time steps = iteration
   points / PEs in use (spatial rank variables, with ceil quantization); cycles per point =
   the busiest functional unit's occupancy (ops per point x unit actions per op) -- or
   their sum on a `serial` PE.
4. *Tiles.* A tile is one array step of the seq rank partition x P0 queries (P0 = the
   array dimension bound to the query variable). Queries are processed in blocks of P1
   tiles; P1 is the largest divisor of the query tiles whose working set fits the buffer
   (Q rows, running state, per-query results, and the multi-pass fibers if they stay).
5. *Traffic.* Inputs carrying the query variable are read once; the others (K, V) once per
   query block; outputs written once; multi-pass fibers that do not fit are spilled with the
   pass analysis's count (one write + one read per extra pass), in full or in part; in an
   unfused schedule every tensor that crosses a phase goes through DRAM.
6. *Schedule.* `interleaved`/`pipelined`: tiles are software-pipelined across arrays, the
   steady state is bound by the busiest array (epoch = its per-tile work), plus prologue
   (stages - 1 epochs) and one array fill; a recurrence whose producer stage is more than
   P1 tiles ahead of its consumer stretches the epoch. `sequential`: one tile at a time,
   list-scheduled on the arrays, with the 2D array's fill/drain exposed per tile.
   `unfused`: phases (each contraction, and each run of other Einsums on one array) one
   after another, each the max of its compute and its memory time. Memory and compute
   overlap within a phase (double buffering): latency = max(compute, memory).
7. *Energy.* Action counts x per-action energies: unit actions, register-file accesses per
   action, buffer rows (words / row width) and DRAM accesses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...diagnostics import EinsumcError, error
from ...ir.symbolic import evaluate as eval_extent
from .arch import Architecture, Array
from .cascade import CascadeModel, EinsumInfo, eval_terms
from .mapping import Mapping

#: shape names accepted although no rank of the cascade has them: they multiply the work
INSTANCE_NAMES = ("B", "H")


def _err(msg: str) -> EinsumcError:
    return EinsumcError([error(msg)])


# ============================================================================ binding
@dataclass
class Plan:
    """What depends on the cascade, the architecture and the mapping but not on shapes."""

    binding: dict[int, str | None]          # einsum index -> array name (None: free)
    spatial: dict[str, tuple[str | None, ...]]   # array -> var per dimension
    query: str | None
    batch: tuple[str, ...]
    reasons: dict[int, str]


def derive_plan(cm: CascadeModel, arch: Architecture, mp: Mapping) -> Plan:
    names = {e.name for e in cm.einsums}
    for t, a in mp.binding.items():
        if t not in names:
            raise _err(f"{mp.where('binding.' + t)}: the cascade has no Einsum writing '{t}' "
                       f"(Einsums: {', '.join(e.name for e in cm.einsums if _computes(e))})")
        if a not in arch.arrays:
            raise _err(f"{mp.where('binding.' + t)}: architecture '{arch.name}' has no array "
                       f"'{a}' (arrays: {', '.join(arch.arrays)})")
    for a in mp.spatial:
        if a not in arch.arrays:
            raise _err(f"{mp.where('spatial.' + a)}: architecture '{arch.name}' has no array "
                       f"'{a}' (arrays: {', '.join(arch.arrays)})")
    allvars = {r.var for r in cm.ranks.values()}
    for a, vs in mp.spatial.items():
        if len(vs) != len(arch.arrays[a].shape):
            raise _err(f"{mp.where('spatial.' + a)}: array '{a}' has {len(arch.arrays[a].shape)} "
                       f"dimension(s), the mapping names {len(vs)} variable(s)")
        for v in vs:
            if v != "auto" and v not in allvars:
                raise _err(f"{mp.where('spatial.' + a)}: '{v}' is not a rank variable of the "
                           f"cascade (variables: {', '.join(sorted(allvars))})")
    query = mp.roles.get("query")
    if query is not None and query not in allvars:
        raise _err(f"{mp.where('roles.query')}: '{query}' is not a rank variable of the cascade "
                   f"(variables: {', '.join(sorted(allvars))})")
    if query is None:
        query = cm.unit_vars[-1] if cm.unit_vars else None
    batch = tuple(v for v in cm.unit_vars if v != query)

    spatial: dict[str, tuple[str | None, ...]] = {}
    for name, arr in arch.arrays.items():
        if name in mp.spatial:
            spatial[name] = tuple(None if v == "auto" else v for v in mp.spatial[name])
        elif arr.kind == "2d":
            spatial[name] = (cm.seq_leaf, query)
        else:
            spatial[name] = (None,)   # decided after binding

    binding: dict[int, str | None] = {}
    reasons: dict[int, str] = {}
    for e in cm.einsums:
        if not _computes(e):
            binding[e.index] = None
            reasons[e.index] = "a re-indexing of an input" if e.view_of else (
                "initial state" if e.kind == "init" else "no operations")
            continue
        if e.name in mp.binding:
            a = mp.binding[e.name]
            missing = [op for op in e.ops if op not in arch.arrays[a].ops]
            if missing:
                raise _err(f"{mp.where('binding.' + e.name)}: Einsum {e.name} needs "
                           f"{', '.join(missing)}, which array '{a}' of {arch.source} does not "
                           f"support (its ops: {', '.join(arch.arrays[a].ops)})")
            binding[e.index] = a
            reasons[e.index] = "mapping"
            continue
        able = [n for n, arr in arch.arrays.items() if all(op in arr.ops for op in e.ops)]
        if not able:
            raise _err(f"no array of {arch.source} supports Einsum {e.name} (line {e.line}): "
                       f"it needs {', '.join(sorted(e.ops))}; arrays support: "
                       + "; ".join(f"{n}: {', '.join(a.ops)}" for n, a in arch.arrays.items()))
        two = [n for n in able if arch.arrays[n].kind == "2d"]
        one = [n for n in able if arch.arrays[n].kind == "1d"]
        pick, why = None, ""
        if two and e.is_contraction:
            pick, why = two[0], "a contraction"
        elif two:
            rv, cv = spatial[two[0]][0], spatial[two[0]][1]
            if rv in e.space and cv in e.space:
                ok = True
                for j in e.same_tile_deps:
                    pj = cm.einsums[j]
                    if binding.get(j) is None:
                        continue
                    axes = set().union(*pj.write.axes) if pj.write.axes else set()
                    if rv in axes and cv in axes and binding[j] != two[0]:
                        ok = False  # a tile-sized operand produced elsewhere
                if ok:
                    pick, why = two[0], f"tile-parallel over {rv} x {cv}, operands in the array"
        if pick is None:
            pick = one[0] if one else able[0]
            why = "vector work" if one else "the only array that supports it"
        binding[e.index] = pick
        reasons[e.index] = why
    for name, arr in arch.arrays.items():
        if arr.kind == "1d" and name not in mp.spatial:
            mine = [e for e in cm.einsums if binding.get(e.index) == name]
            if mine and cm.seq_leaf and all(cm.seq_leaf in e.space and cm.seq_leaf != e.iter_var
                                            for e in mine) \
                    and cm.seq_leaf == cm.seq_root:
                spatial[name] = (cm.seq_leaf,)
            else:
                spatial[name] = (query,)
    return Plan(binding, spatial, query, batch, reasons)


def _computes(e: EinsumInfo) -> bool:
    return bool(e.ops) and e.view_of is None and e.kind != "init"


# ============================================================================ results
@dataclass
class EinsumCost:
    index: int
    name: str
    array: str | None
    steps: float = 0.0          # time steps (per whole run)
    cpp: float = 0.0            # cycles per point (per step)
    cycles: float = 0.0         # time on its array
    pe_cycles: float = 0.0      # busy PE-cycles
    actions: float = 0.0
    energy_pj: float = 0.0
    tiles: float = 0.0          # tile instances it runs in
    stage: int = 0
    spatial: tuple = ()
    phase: int = 0


@dataclass
class Result:
    spec: str
    arch: str
    mapping: str
    schedule: str
    shapes: dict[str, int]
    instances: float
    latency_s: float
    compute_s: float
    memory_s: float
    util: dict[str, float]
    util_2d: float
    util_1d: float
    dram_bytes: float
    dram_by_tensor: dict[str, float]
    energy_pj: float
    energy_by_component: dict[str, float]
    bottleneck: str
    einsums: list[EinsumCost]
    plan: Plan
    tile: dict
    buffer: dict
    phases: list[dict] = field(default_factory=list)
    epoch: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"latency_s": self.latency_s, "util_2d": self.util_2d, "util_1d": self.util_1d,
                "dram_bytes": self.dram_bytes, "energy_pj": self.energy_pj,
                "bottleneck": self.bottleneck}


# ============================================================================ extents
def resolve_extents(cm: CascadeModel, shapes: dict[str, float], tiles: dict[str, int],
                    where: str = "--shape") -> tuple[dict[str, int], float, list[str]]:
    """Rank extents (by name) from the shapes, the mapping's tile sizes and the
    declarations; the product of non-rank instance multipliers (B, H); notes."""
    notes: list[str] = []
    given: dict[str, int] = {}
    inst = 1.0
    for k, v in shapes.items():
        if k in cm.ranks:
            iv = int(v)
            if iv != v or iv < 1:
                raise _err(f"{where}: {k} = {v} is not a positive integer")
            given[k] = iv
        elif k in INSTANCE_NAMES:
            inst *= v
        else:
            raise _err(f"{where}: '{k}' is not a rank of {cm.name} (ranks: "
                       f"{', '.join(cm.ranks)}; B and H multiply the work when the cascade "
                       "has no such rank)")
    for k, v in tiles.items():
        if k not in given:
            given[k] = v
    ext: dict[str, int] = {}
    for k, v in given.items():
        r = cm.ranks[k]
        if r.derived:
            raise _err(f"{where}: rank {k} is derived from other extents in {cm.name}; give "
                       "those instead")
        if r.literal is not None and r.literal != v:
            notes.append(f"{k} = {v} (the cascade declares {r.literal})")
        ext[k] = v
    decls = {d.name: d for d in cm.rank_decls}
    for _ in range(len(decls) + 1):
        for name, d in decls.items():
            if name in ext or d.extent is None:
                continue
            try:
                v = eval_extent(d.extent, ext, {})
            except KeyError:
                continue
            except ZeroDivisionError:
                raise _err(f"rank {name} of {cm.name} divides by zero") from None
            if not isinstance(v, int) or v < 1:
                raise _err(f"rank {name} of {cm.name} evaluates to {v}, not a positive integer, "
                           "with " + ", ".join(f"{k} = {x}" for k, x in sorted(ext.items()))
                           + " (e.g. M must be a multiple of M0)")
            ext[name] = v
    missing = [n for n, d in decls.items() if n not in ext]
    if missing:
        raise _err(f"{where}: give the extent of {', '.join(missing)} (e.g. "
                   + ",".join(f"{m}=4096" for m in missing) + ")")
    return ext, inst, notes


# ============================================================================ evaluation
def evaluate(cm: CascadeModel, arch: Architecture, mp: Mapping, shapes: dict[str, float],
             plan: Plan | None = None) -> Result:
    plan = plan or derive_plan(cm, arch, mp)
    tiles = _tile_sizes(cm, arch, mp, plan, shapes)
    ext_n, inst, notes = resolve_extents(cm, shapes, tiles)
    ext = {cm.ranks[n].var: v for n, v in ext_n.items()}
    wb = arch.word_bytes
    q = plan.query
    batch_mult = inst * math.prod(ext[v] for v in plan.batch)

    # ---------------------------------------------------------------- compute per Einsum
    costs: list[EinsumCost] = []
    for e in cm.einsums:
        a = plan.binding[e.index]
        c = EinsumCost(e.index, e.name, a)
        if a is not None:
            _einsum_compute(c, e, arch.arrays[a], plan.spatial[a], ext, inst)
        costs.append(c)

    # ---------------------------------------------------------------- tiles
    used = [arch.arrays[a] for a in {c.array for c in costs if c.array}]
    p0 = 1
    for arr in used:
        for d, v in zip(arr.shape, plan.spatial[arr.name]):
            if v == q:
                p0 = max(p0, d)
    p0 = min(p0, ext[q]) if q else 1
    leaf, root = cm.seq_leaf, cm.seq_root
    partitioned = leaf is not None and leaf != root
    ext_tile = _tile_extents(cm, plan, ext, p0)
    n_q = math.ceil(ext[q] / p0) if q else 1
    n_seq = math.prod(ext[v] for v in cm.seq_outer) if partitioned else 1
    n_main = batch_mult * n_q * n_seq
    tiled = {q, *cm.seq_outer} - {None}
    for c, e in zip(costs, cm.einsums):
        if c.array is not None:
            c.tiles = batch_mult * math.prod(math.ceil(ext[v] / ext_tile[v])
                                             for v in tiled if v in e.space)
    chunk = _seq_chunk(cm, arch, plan, ext)

    # ---------------------------------------------------------------- classes of tensors
    cls = _classes(cm, plan)

    def size(t: str) -> float:
        """Elements of tensor t (all instances)."""
        meta = cm.tensors[t]
        return inst * math.prod(ext[v] for v in meta.plain_axes)

    def per_query(t: str) -> float:
        meta = cm.tensors[t]
        return math.prod(ext[v] for v in meta.plain_axes if v != q and v not in plan.batch)

    # ---------------------------------------------------------------- schedule
    sched = mp.schedule
    if sched == "unfused":
        phases, dram, by_tensor, buf, gb = _unfused(cm, arch, mp, plan, costs, ext, inst,
                                                     batch_mult, cls, size, per_query, chunk)
        compute_c = sum(p["compute_cycles"] for p in phases)
        latency = sum(p["latency_s"] for p in phases)
        mem_s = sum(p["memory_s"] for p in phases)
        comp_s = compute_c / arch.clock_hz
        epoch = {}
        p1 = None
        bottleneck = _phase_bottleneck(phases)
        tile_info = {"queries_per_tile": None, "phases": len(phases)}
    else:
        block = _query_blocks(cm, arch, mp, plan, ext, cls, per_query, chunk, p0, n_q, size,
                              where="the fused working set")
        p1 = block["P1"]
        dram, by_tensor = block["dram_bytes"], block["by_tensor"]
        buf = block["buffer"]
        gb = _gb_words(cm, plan, costs, ext_tile, cls, arch, None)
        _stages(cm, plan, costs)
        busy = _busy(costs)
        mem_s = dram / arch.dram_bw
        epoch = {a: busy.get(a, 0.0) / n_main for a in arch.arrays}
        if sched in ("interleaved", "pipelined"):
            depth = max((c.stage for c in costs if c.array), default=0) + 1
            steady = max(busy.values(), default=0.0)
            need = _recurrence_distance(cm, costs)
            slow = max(1.0, need / p1) if need else 1.0
            fd = max((arch.arrays[a].fill_drain_cycles for a in busy
                      if arch.arrays[a].kind == "2d"), default=0)
            per_tile = steady / n_main if n_main else 0.0
            compute_c = steady * slow + (depth - 1) * per_tile + fd
            if slow > 1:
                notes.append(f"recurrence stall: the running state is needed {need} tiles after "
                             f"it is produced, but a query block has only P1 = {p1} tiles; "
                             f"each epoch stretches by {slow:.2f}x")
            bottleneck_c = "recurrence" if slow > 1 else max(busy, key=busy.get) if busy else "-"
        else:  # sequential
            main = [c for c in costs if c.array and c.tiles >= n_main]
            epi = [c for c in costs if c.array and c.tiles < n_main]
            span = _list_schedule(cm, main, n_main)
            fd = max((arch.arrays[c.array].fill_drain_cycles for c in main
                      if arch.arrays[c.array].kind == "2d"), default=0)
            compute_c = n_main * (span + fd) + sum(c.cycles for c in epi)
            depth = 1
            per_tile = span + fd
            bottleneck_c = "fill/drain" if fd > span else "dependencies"
            epoch = {"tile_span_cycles": span, "fill_drain_cycles": fd}
        comp_s = compute_c / arch.clock_hz
        latency = max(comp_s, mem_s)
        if mem_s > comp_s:
            bottleneck = "DRAM bandwidth"
        elif sched == "sequential":
            bottleneck = f"tile latency ({bottleneck_c})"
        else:
            bottleneck = f"array {bottleneck_c}" if bottleneck_c not in ("recurrence",) else \
                "recurrence (query block too small)"
        phases = []
        tile_info = {"queries_per_tile": p0, "P1": p1, "query_blocks": block["blocks"],
                     "seq_tiles": n_seq, "tiles": n_main, "depth": depth,
                     "plan": block["plan"], "spilled_fraction": block["spilled"],
                     "per_tile_cycles": {a: epoch.get(a, 0.0) for a in arch.arrays}
                     if sched != "sequential" else {"span": per_tile}}
        epoch = {"per_array_cycles": {a: busy.get(a, 0.0) / n_main for a in arch.arrays}
                 if n_main else {}, **({"tile_span_cycles": epoch.get("tile_span_cycles"),
                                        "fill_drain_cycles": epoch.get("fill_drain_cycles")}
                                       if sched == "sequential" else {})}

    # ---------------------------------------------------------------- utilization
    lat_cycles = latency * arch.clock_hz
    util: dict[str, float] = {}
    for name, arr in arch.arrays.items():
        pe = sum(c.pe_cycles for c in costs if c.array == name)
        util[name] = pe / (lat_cycles * arr.pes) if lat_cycles > 0 else 0.0
    u2 = sum(v for n, v in util.items() if arch.arrays[n].kind == "2d")
    u1 = sum(v for n, v in util.items() if arch.arrays[n].kind == "1d")

    # ---------------------------------------------------------------- energy
    energy: dict[str, float] = {}
    for name, arr in arch.arrays.items():
        mine = [c for c in costs if c.array == name]
        acts = sum(c.actions for c in mine)
        energy[f"compute_{name}"] = sum(c.energy_pj for c in mine)
        r = arr.registers
        energy[f"registers_{name}"] = acts * (r.reads_per_action * r.read_pj
                                             + r.writes_per_action * r.write_pj)
    # DRAM reads fill the buffer; DRAM writes drain it
    gb_reads = gb["reads"] + by_tensor.get("__written__", 0.0) / wb
    gb_writes = gb["writes"] + by_tensor.get("__read__", 0.0) / wb
    energy["buffer"] = (gb_reads / arch.buffer_row_words * arch.buffer_read_pj_row
                        + gb_writes / arch.buffer_row_words * arch.buffer_write_pj_row)
    energy["dram"] = dram / arch.dram_access_bytes * arch.dram_pj_per_access
    by_tensor = {k: v for k, v in by_tensor.items() if not k.startswith("__")}
    total_e = sum(energy.values())

    return Result(cm.name, arch.name, mp.name, sched, dict(ext_n), inst, latency, comp_s, mem_s,
                  util, u2, u1, dram, by_tensor, total_e, energy, bottleneck, costs, plan,
                  tile_info, buf, phases, epoch, notes)


# ---------------------------------------------------------------------------- pieces
def _tile_extents(cm: CascadeModel, plan: Plan, ext: dict, p0: int) -> dict:
    """Extents within one tile: P0 queries, one iterate of the outer sequence partitions,
    one batch instance."""
    out = dict(ext)
    if plan.query:
        out[plan.query] = p0
    for v in (*cm.seq_outer, *plan.batch):
        out[v] = 1
    return out


def _tile_sizes(cm: CascadeModel, arch: Architecture, mp: Mapping, plan: Plan,
                shapes: dict) -> dict[str, int]:
    """Extents of partition ranks set by the mapping (default: the seq rank's innermost
    partition = the array dimension it is laid on)."""
    out: dict[str, int] = {}
    for k, v in mp.tiles.items():
        if k not in cm.ranks:
            raise _err(f"{mp.where('tiles.' + k)}: '{k}' is not a rank of {cm.name}")
        if isinstance(v, str):
            arr = arch.first("2d") or next(iter(arch.arrays.values()))
            idx = 0 if v == "rows" else 1
            if idx >= len(arr.shape):
                raise _err(f"{mp.where('tiles.' + k)}: array '{arr.name}' has no {v}")
            v = arr.shape[idx]
        out[k] = v
    leaf = cm.seq_leaf
    if leaf and leaf != cm.seq_root:
        rank = cm.var_rank(leaf)
        info = cm.ranks.get(rank)
        if info is not None and info.literal is not None and rank not in out \
                and rank not in shapes:
            for name, vs in plan.spatial.items():
                for d, v in zip(arch.arrays[name].shape, vs):
                    if v == leaf:
                        out[rank] = d
                        break
                if rank in out:
                    break
    return out


def _einsum_compute(c: EinsumCost, e: EinsumInfo, arr: Array, svars, ext, inst) -> None:
    counts = {op: eval_terms(t, ext) for op, t in e.ops.items()}
    points = math.prod(ext[v] for v in e.space)
    used: list[str] = []
    factor = 1.0
    for d, want in zip(arr.shape, svars):
        # a recurrence's iterative variable is sequential: never spread over PEs
        v = want if (want in e.space and want not in used and want != e.iter_var) else None
        if v is None:
            cands = [x for x in e.space if x not in used and x != e.iter_var and ext[x] > 1]
            if want is None and cands:
                v = max(cands, key=lambda x: ext[x])
            elif cands and want not in e.space:
                v = max(cands, key=lambda x: ext[x])
        if v is None:
            continue
        used.append(v)
        factor *= math.ceil(ext[v] / d) / ext[v]
    steps = points * factor
    occ: dict[str, float] = {}
    energy = 0.0
    actions = 0.0
    for op, n in counts.items():
        for u, k in arr.occupancy(op).items():
            occ[u] = occ.get(u, 0.0) + n * k
        energy += n * arr.op_energy(op)
        actions += n * arr.op_actions(op)
    if points:
        per_point = (sum(occ.values()) if arr.issue == "serial" else max(occ.values(), default=0))
        cpp = per_point / points
    else:
        cpp = 0.0
    c.steps = steps * inst
    c.cpp = cpp
    c.cycles = steps * cpp * inst
    c.pe_cycles = points * cpp * inst
    c.actions = actions * inst
    c.energy_pj = energy * inst
    c.spatial = tuple(used)


def _seq_chunk(cm, arch, plan, ext) -> int:
    """Elements of the seq rank an array consumes per step (a K/V chunk)."""
    leaf = cm.seq_leaf
    if leaf is None:
        return 1
    for name, vs in plan.spatial.items():
        for d, v in zip(arch.arrays[name].shape, vs):
            if v == leaf:
                return min(d, ext[leaf])
    return ext[leaf]


def _classes(cm: CascadeModel, plan: Plan) -> dict[str, str]:
    """input | output | state | fiber | perquery | local, for every tensor."""
    out: dict[str, str] = {}
    fibers = set(cm.fibers)
    for t, meta in cm.tensors.items():
        if meta.kind == "input":
            out[t] = "input"
        elif meta.kind == "output":
            out[t] = "output"
        elif any(e.view_of for e in cm.einsums if e.name == t):
            out[t] = "view"
        elif meta.iter_axis is not None:
            out[t] = "state"
        elif t in fibers:
            out[t] = "fiber"
        elif plan.query in meta.axes and not (set(meta.axes) & cm.seq_vars):
            out[t] = "perquery"
        else:
            out[t] = "local"
    return out


def _tile_extent(cm: CascadeModel, v: str, q, p0: int, chunk: int, ext) -> int:
    """Extent of variable v in one streamed tile: a chunk of the sequence rank (outer
    partitions: one), P0 queries, everything else whole."""
    if v in cm.seq_vars:
        return 1 if v in cm.seq_outer else chunk
    if v == q:
        return p0
    return ext[v]


def _view_base(cm: CascadeModel, t: str) -> str:
    for e in cm.einsums:
        if e.name == t and e.view_of:
            return e.view_of
    return t


def _accumulated(cm: CascadeModel, t: str) -> bool:
    """An output or per-query result reduced over the seq rank: its accumulators live
    across the seq loop."""
    for e in cm.einsums:
        if e.name == t and (e.reduced & cm.seq_vars):
            return True
    return False


def _query_blocks(cm, arch, mp, plan, ext, cls, per_query, chunk, p0, n_q, size,
                  where: str, einsum_set=None, dram_inputs=None, dram_outputs=None) -> dict:
    """Choose P1 (query tiles per block) and the spill plan; DRAM traffic and buffer use."""
    wb = arch.word_bytes
    cap = arch.buffer_bytes / wb
    q = plan.query
    E = cm.einsums if einsum_set is None else einsum_set
    touched: set[str] = set()
    for e in E:
        touched.add(e.name)
        for a in e.reads:
            touched.add(_view_base(cm, a.tensor))
    inputs = [t for t in (dram_inputs if dram_inputs is not None else
                          [t for t in cm.inputs if t in touched])]
    outputs = [t for t in (dram_outputs if dram_outputs is not None else
                           [t for t in cm.outputs if t in touched])]
    alloc: list[dict] = []
    base = 0.0
    shared = 0.0
    phase_fibers = {t for t in cm.fibers if einsum_set is not None}
    for t in inputs:
        meta = cm.tensors[t]
        has_q = q in meta.axes
        has_s = bool(set(meta.axes) & cm.seq_vars)
        if t in phase_fibers and sum(1 for e in E for a in e.reads
                                     if _view_base(cm, a.tensor) == t) > 1:
            continue  # loaded once into its fiber buffer (below)
        if has_q and not has_s:
            w = per_query(t)
            base += w
            alloc.append({"tensor": t, "role": "input rows (resident per query)",
                          "words_per_query": w})
        else:
            w = math.prod(_tile_extent(cm, v, q, p0, chunk, ext)
                          for v in meta.plain_axes if v not in plan.batch)
            shared += w
            alloc.append({"tensor": t, "role": "streamed tile", "words": w})
    for t in touched:
        c = cls.get(t)
        if c in ("state", "perquery") or (c == "output" and _accumulated(cm, t)):
            if t in inputs:
                continue
            w = per_query(t)
            base += w
            alloc.append({"tensor": t, "role": {"state": "running state", "perquery":
                                                 "per-query result", "output":
                                                 "output accumulators"}[c],
                          "words_per_query": w})
    # multi-pass fibers: the most that must survive any pass boundary; in a phase, only
    # those the phase itself reads in several passes (the others cross it through DRAM)
    readers: dict[str, int] = {}
    for e in E:
        for t in {_view_base(cm, a.tensor) for a in e.reads}:
            readers[t] = readers.get(t, 0) + 1
    fibers = [t for t in cm.fibers if t in touched and (einsum_set is None or
                                                        readers.get(t, 0) > 1)]
    fiber_pq = 0.0
    live_at: dict[int, list[str]] = {}
    for t in fibers:
        a, b = cm.tensor_pass_span.get(t, (1, cm.passes))
        for k in range(a, b):
            live_at.setdefault(k, []).append(t)
    for k, ts in live_at.items():
        fiber_pq = max(fiber_pq, sum(per_query(t) for t in ts))
    fiber_names = sorted({t for ts in live_at.values() for t in ts})

    def fits(p1: int, frac: float) -> bool:
        return p1 * p0 * (base + frac * fiber_pq) + shared <= cap

    divs = _divisors(n_q)

    def largest(frac: float) -> int | None:
        if mp.query_block is not None:
            return mp.query_block if fits(mp.query_block, frac) else None
        return next((d for d in divs if fits(d, frac)), None)

    def traffic(p1: int, spilled: float) -> tuple[float, dict]:
        blocks = math.ceil(n_q / p1)
        by: dict[str, float] = {}
        rd = wr = 0.0
        for t in inputs:
            mult = 1 if (q in cm.tensors[t].axes or q is None) else blocks
            by[t] = size(t) * wb * mult
            rd += by[t]
        for t in outputs:
            by[t] = by.get(t, 0.0) + size(t) * wb
            wr += size(t) * wb
        if spilled:
            for t in fibers:
                # one write, and one read per extra pass (the pass analysis's count)
                k = cm.tensor_passes[t]
                by[t + " (spill)"] = spilled * k * size(t) * wb
                wr += spilled * size(t) * wb
                rd += spilled * (k - 1) * size(t) * wb
        by["__read__"], by["__written__"] = rd, wr
        return rd + wr, by

    plans = []
    p1 = largest(1.0)
    if p1 is not None and (fiber_pq == 0 or mp.spill in ("auto", "never", "partial")):
        plans.append(("fit", p1, 0.0))
    if fiber_pq > 0 and mp.spill in ("auto", "partial") and p1 is None:
        one = mp.query_block or 1
        avail = cap - shared - one * p0 * base
        frac_on = max(0.0, min(1.0, avail / (one * p0 * fiber_pq)))
        if 0.0 < frac_on < 1.0 or (mp.spill == "partial" and avail >= 0):
            plans.append(("partial", one, 1.0 - frac_on))
    if fiber_pq > 0 and mp.spill in ("auto", "full"):
        pf = largest(0.0)
        if pf is not None:
            plans.append(("full", pf, 1.0))
    if not plans:
        need = p0 * (base + (fiber_pq if mp.spill == "never" else 0)) + shared
        parts = ", ".join(f"{a['tensor']} ({a.get('words_per_query', a.get('words'))} "
                          f"word{'s' if a.get('words_per_query', a.get('words')) != 1 else ''}"
                          f"{' per query' if 'words_per_query' in a else ''})" for a in alloc)
        if mp.spill == "never" and fiber_pq:
            parts += f", multi-pass fibers {', '.join(fiber_names)} ({fiber_pq:g} words per query)"
        qb = f" with query_block = {mp.query_block}" if mp.query_block else ""
        raise _err(f"{mp.source}: {where} does not fit the {arch.buffer_bytes:,}-byte buffer of "
                   f"{arch.source}{qb}: one block of {p0} queries needs {need * wb:,.0f} bytes "
                   f"({parts}); "
                   + ("allow spilling (spill: auto) or " if mp.spill == "never" and fiber_pq
                      else "") + "use a larger buffer or fewer queries per tile")
    best = None
    for name, p1v, sp in plans:
        tb, by = traffic(p1v, sp)
        key = (tb, 0 if name == "fit" else 1)
        if best is None or key < best[0]:
            best = (key, name, p1v, sp, tb, by)
    _, name, p1v, sp, tb, by = best
    on_frac = 1.0 - sp
    if fiber_names and on_frac > 0:
        alloc.append({"tensor": "/".join(fiber_names),
                      "role": "multi-pass fiber" + ("s (in place)" if len(fiber_names) > 1
                                                    else "")
                      + (f", {on_frac:.1%} on chip" if sp else ""),
                      "words_per_query": fiber_pq * on_frac})
    used_words = p1v * p0 * (base + on_frac * fiber_pq) + shared
    for a in alloc:
        if "words_per_query" in a:
            a["words"] = a["words_per_query"] * p1v * p0
        a["bytes"] = a["words"] * wb
    return {"P1": p1v, "blocks": math.ceil(n_q / p1v), "plan": name, "spilled": sp,
            "dram_bytes": tb, "by_tensor": by,
            "buffer": {"capacity_bytes": arch.buffer_bytes, "used_bytes": used_words * wb,
                       "occupancy": used_words * wb / arch.buffer_bytes, "allocations": alloc,
                       "queries_resident": p1v * p0, "plan": name}}


def _divisors(n: int) -> list[int]:
    """Divisors of n, largest first, from its factorization over primes below 1000 (any
    cofactor left is treated as one prime): the cost does not grow with n."""
    factors: dict[int, int] = {}
    r = n
    p = 2
    while p < 1000 and r > 1:
        while r % p == 0:
            factors[p] = factors.get(p, 0) + 1
            r //= p
        p += 1 if p == 2 else 2
    if r > 1:
        factors[r] = factors.get(r, 0) + 1
    divs = [1]
    for f, k in factors.items():
        divs = [d * f ** i for d in divs for i in range(k + 1)]
    return sorted(divs, reverse=True)


def _busy(costs) -> dict[str, float]:
    out: dict[str, float] = {}
    for c in costs:
        if c.array:
            out[c.array] = out.get(c.array, 0.0) + c.cycles
    return out


def _stages(cm, plan, costs) -> None:
    """Software-pipeline stages: a consumer on another array runs one epoch later than its
    producer (as soon as possible), then work is sunk as late as its consumers allow."""
    arr = {c.index: c.array for c in costs}
    stage: dict[int, int] = {}
    for e in cm.einsums:
        if not arr[e.index]:
            continue
        s = 0
        for j in e.same_tile_deps:
            if arr.get(j):
                s = max(s, stage[j] + (0 if arr[j] == arr[e.index] else 1))
        stage[e.index] = s
    consumers: dict[int, list[int]] = {}
    for e in cm.einsums:
        if arr[e.index]:
            for j in e.same_tile_deps:
                if arr.get(j):
                    consumers.setdefault(j, []).append(e.index)
    for e in reversed(cm.einsums):
        i = e.index
        if i not in stage or i not in consumers:
            continue
        latest = min(stage[c] - (0 if arr[c] == arr[i] else 1) for c in consumers[i])
        if latest > stage[i]:
            stage[i] = latest
    for c in costs:
        c.stage = stage.get(c.index, 0)


def _recurrence_distance(cm, costs) -> int:
    """Tiles between producing a running state and needing it again (0: no recurrence)."""
    st = {c.index: c.stage for c in costs}
    arr = {c.index: c.array for c in costs}
    need = 0
    for e in cm.einsums:
        for _t, j in e.carried:
            if e.index in st and j in st:
                d = st[j] - st[e.index] + (0 if (arr[j] == arr[e.index] and j <= e.index) else 1)
                need = max(need, d, 1)
    return need


def _list_schedule(cm, main: list[EinsumCost], n_main: float) -> float:
    """Makespan of one tile: each Einsum on its array, in program order, after its
    same-tile producers."""
    free: dict[str, float] = {}
    done: dict[int, float] = {}
    byi = {c.index: c for c in main}
    for e in cm.einsums:
        c = byi.get(e.index)
        if c is None:
            continue
        d = c.cycles / n_main if n_main else 0.0
        start = max([free.get(c.array, 0.0)] + [done[j] for j in e.same_tile_deps if j in done])
        done[e.index] = start + d
        free[c.array] = start + d
    return max(done.values(), default=0.0)


def _gb_words(cm, plan, costs, ext_tile, cls, arch, only: set[int] | None) -> dict:
    """Buffer words read and written by the arrays: operands staged in the buffer are
    read once per tile instance (the array multicasts them), results that leave an array
    for a consumer it is not linked to are written and read back."""
    reads = writes = 0.0
    arr = {c.index: c.array for c in costs}
    consumers: dict[str, set[str]] = {}
    for e in cm.einsums:
        if arr[e.index]:
            for a in e.reads:
                consumers.setdefault(_view_base(cm, a.tensor), set()).add(arr[e.index])
    producer_arr = {}
    for e in cm.einsums:
        if arr[e.index]:
            producer_arr[e.name] = arr[e.index]

    def in_buffer(t: str, reader: str | None) -> bool:
        c = cls.get(t, "local")
        if c in ("input", "view", "output", "state", "perquery", "fiber"):
            return True
        p = producer_arr.get(t)
        if p is None:
            return True
        if reader is None:
            return any(not arch.linked(p, r) for r in consumers.get(t, ()))
        return not arch.linked(p, reader)

    def slice_words(axes) -> float:
        return math.prod(ext_tile[v] for ax in axes for v in ax)

    for c, e in zip(costs, cm.einsums):
        if not c.array or (only is not None and c.index not in only):
            continue
        for a in e.reads:
            t = _view_base(cm, a.tensor)
            if in_buffer(t, c.array):
                reads += slice_words(a.axes) * c.tiles
        if in_buffer(e.name, None):
            writes += slice_words(e.write.axes) * c.tiles
    return {"reads": reads, "writes": writes}


def _unfused(cm, arch, mp, plan, costs, ext, inst, batch_mult, cls, size, per_query, chunk):
    """Phases run one after another; what crosses a phase goes through DRAM."""
    q = plan.query
    order = [e for e in cm.einsums if plan.binding[e.index]]
    phases_e: list[list[EinsumInfo]] = []
    for e in order:
        a = plan.binding[e.index]
        if phases_e and plan.binding[phases_e[-1][-1].index] == a and not e.is_contraction \
                and not phases_e[-1][-1].is_contraction:
            phases_e[-1].append(e)
        else:
            phases_e.append([e])
    phase_of = {}
    for k, ph in enumerate(phases_e):
        for e in ph:
            phase_of[e.name] = k
    for c in costs:
        c.phase = phase_of.get(c.name, -1) if c.array else -1
    out = []
    total_by: dict[str, float] = {}
    dram_total = 0.0
    gb = {"reads": 0.0, "writes": 0.0}
    buffers = []
    for k, ph in enumerate(phases_e):
        names = {e.name for e in ph}
        ins: list[str] = []
        for e in ph:
            for a in e.reads:
                t = _view_base(cm, a.tensor)
                if t not in names and t not in ins:
                    ins.append(t)
        outs = [e.name for e in ph if cls[e.name] == "output" or any(
            e.name in {_view_base(cm, a.tensor) for a in f.reads}
            for ph2 in phases_e if ph2 is not ph for f in ph2)]
        a = arch.arrays[plan.binding[ph[0].index]]
        p0 = 1
        for d, v in zip(a.shape, plan.spatial[a.name]):
            if v == q:
                p0 = d
        p0 = min(p0, ext[q]) if q else 1
        n_q = math.ceil(ext[q] / p0) if q else 1
        sub_cls = dict(cls)
        for t in ins:
            sub_cls[t] = "input"
        block = _query_blocks(cm, arch, mp, plan, ext, sub_cls, per_query, chunk, p0, n_q, size,
                              where=f"phase {k + 1} ({', '.join(e.name for e in ph)})",
                              einsum_set=ph, dram_inputs=ins, dram_outputs=outs)
        busy = sum(c.cycles for c in costs if c.name in names and c.array)
        comp_s = busy / arch.clock_hz
        mem_s = block["dram_bytes"] / arch.dram_bw
        ext_tile = _tile_extents(cm, plan, ext, p0)
        idx = {e.index for e in ph}
        for c, e in zip(costs, cm.einsums):
            if c.index in idx:
                c.tiles = batch_mult * (math.ceil(ext[q] / p0) if q and q in e.space else 1) * \
                    math.prod(ext[v] for v in cm.seq_outer if v in e.space)
        g = _gb_words(cm, plan, costs, ext_tile, sub_cls, arch, idx)
        gb["reads"] += g["reads"]
        gb["writes"] += g["writes"]
        for t, v in block["by_tensor"].items():
            total_by[t] = total_by.get(t, 0.0) + v
        dram_total += block["dram_bytes"]
        buffers.append({"phase": k + 1, **block["buffer"]})
        out.append({"phase": k + 1, "einsums": [e.name for e in ph], "array": a.name,
                    "compute_cycles": busy, "compute_s": comp_s, "memory_s": mem_s,
                    "dram_bytes": block["dram_bytes"], "latency_s": max(comp_s, mem_s),
                    "reads_from_dram": ins, "writes_to_dram": outs, "P1": block["P1"],
                    "plan": block["plan"], "spilled_fraction": block["spilled"]})
    buf = max(buffers, key=lambda b: b["used_bytes"]) if buffers else {}
    buf = {**buf, "per_phase": buffers}
    return out, dram_total, total_by, buf, gb


def _phase_bottleneck(phases) -> str:
    if not phases:
        return "-"
    mem = sum(p["latency_s"] for p in phases if p["memory_s"] >= p["compute_s"])
    comp = sum(p["latency_s"] for p in phases if p["memory_s"] < p["compute_s"])
    if mem > comp:
        return "DRAM bandwidth (phases writing and re-reading intermediates)"
    worst = max(phases, key=lambda p: p["latency_s"] if p["compute_s"] > p["memory_s"] else 0)
    return f"array {worst['array']} (phase {worst['phase']}: {', '.join(worst['einsums'])})"
