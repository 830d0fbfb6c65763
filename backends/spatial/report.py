"""Rendering a schedule and its costs: text for people, JSON (schema 1) for tools."""
from __future__ import annotations

import json

from .arch import Architecture
from .cascade import CascadeModel
from .model import Result

SCHEMA = 1


def _fmt_bytes(b: float) -> str:
    for unit, k in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if b >= k:
            return f"{b / k:,.2f} {unit}"
    return f"{b:,.0f} B"


def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:,.4g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.4g} ms"
    return f"{s * 1e6:.4g} us"


def to_dict(r: Result, cm: CascadeModel, arch: Architecture) -> dict:
    plan = r.plan
    einsums = []
    for c in r.einsums:
        e = cm.einsums[c.index]
        einsums.append({
            "index": c.index, "tensor": c.name, "einsum": e.text, "line": e.line,
            "array": c.array, "why": plan.reasons.get(c.index),
            "spatial": list(c.spatial), "stage": c.stage if c.array else None,
            "phase": (c.phase + 1) if r.schedule == "unfused" and c.array else None,
            "cycles": c.cycles, "cycles_per_point": c.cpp, "time_steps": c.steps,
            "tile_instances": c.tiles,
            "cycles_per_tile": (c.cycles / c.tiles) if c.tiles else 0.0,
            "energy_pj": c.energy_pj})
    return {
        "schema": SCHEMA,
        "spec": r.spec, "arch": r.arch, "arch_file": arch.source, "mapping": r.mapping,
        "schedule": r.schedule, "shapes": r.shapes, "instances": r.instances,
        "latency_s": r.latency_s, "compute_s": r.compute_s, "memory_s": r.memory_s,
        "util_2d": r.util_2d, "util_1d": r.util_1d, "util": r.util,
        "dram_bytes": r.dram_bytes, "dram_by_tensor": r.dram_by_tensor,
        "energy_pj": r.energy_pj, "energy_by_component": r.energy_by_component,
        "bottleneck": r.bottleneck,
        "roles": {"sequence_rank": cm.seq_rank, "sequence_vars": sorted(cm.seq_vars),
                  "tile_var": cm.seq_leaf, "query": plan.query, "batch": list(plan.batch),
                  "passes": cm.passes, "multi_pass_fibers": cm.fibers},
        "spatial": {a: list(v) for a, v in plan.spatial.items()},
        "tile": r.tile, "epoch": r.epoch, "buffer": r.buffer, "phases": r.phases,
        "loop_nest": loop_nest(r, cm),
        "einsums": einsums, "notes": r.notes,
    }


def to_json(r: Result, cm: CascadeModel, arch: Architecture) -> str:
    return json.dumps(to_dict(r, cm, arch), indent=2, default=_jsonable)


def _jsonable(x):
    if isinstance(x, (set, frozenset, tuple)):
        return list(x)
    return str(x)


def loop_nest(r: Result, cm: CascadeModel) -> list[str]:
    """The loop nest of the mapping, outermost first, as text lines."""
    plan = r.plan
    ext = {cm.ranks[n].var: v for n, v in r.shapes.items()}
    q = plan.query
    lines: list[str] = []

    def add(depth: int, s: str) -> None:
        lines.append("  " * depth + s)

    d = 0
    if plan.batch or r.instances > 1:
        extra = " x ".join([f"{v.upper()}={ext[v]}" for v in plan.batch]
                           + ([f"{r.instances:g} instances (B x H)"] if r.instances > 1 else []))
        add(d, f"for batch in [{extra}]:")
        d += 1
    if r.schedule == "unfused":
        for ph in r.phases:
            add(d, f"phase {ph['phase']} on {ph['array']}: {', '.join(ph['einsums'])}  (reads "
                   f"{', '.join(ph['reads_from_dram']) or '-'} from DRAM, writes "
                   f"{', '.join(ph['writes_to_dram']) or '-'}; P1 = {ph['P1']}, {ph['plan']})")
        return lines
    t = r.tile
    p0, p1, blocks = t["queries_per_tile"], t["P1"], t["query_blocks"]
    if q:
        add(d, f"for {q}2 in [0, {blocks}):    # query blocks of P1 x P0 = {p1} x {p0} queries")
        d += 1
    block_depth = d
    outer = list(cm.seq_outer) if cm.seq_leaf != cm.seq_root else []
    for v in outer:
        add(d, f"for {v} in [0, {ext[v]}):    # sequence tiles of {cm.seq_rank}")
        d += 1
    if q:
        add(d, f"for {q}1 in [0, {p1}):")
        d += 1
    arrays: dict[str, list] = {}
    for c in r.einsums:
        if c.array:
            arrays.setdefault(c.array, []).append(c)
    for a, vs in plan.spatial.items():
        if a not in arrays:
            continue
        dims = ", ".join(f"{v} on {n}" for v, n in zip(vs, _dims(r, a)) if v)
        names = [c.name for c in arrays[a] if c.tiles >= t["tiles"]]
        if names:
            add(d, f"parallel on {a} [{dims}]: {', '.join(names)}")
    epi = [c for c in r.einsums if c.array and c.tiles < t["tiles"]]
    for c in epi:
        add(block_depth, f"on {c.array}: {c.name}    # once per query tile, after the sequence loop")
    return lines


def _dims(r: Result, a: str) -> list[str]:
    from itertools import zip_longest
    arr_dims = r.plan.spatial.get(a, ())
    names = ["rows", "cols"] if len(arr_dims) == 2 else ["pes"]
    return [n for n, _ in zip_longest(names, arr_dims)]


def to_text(r: Result, cm: CascadeModel, arch: Architecture) -> str:
    plan = r.plan
    out: list[str] = []
    shapes = ", ".join(f"{k}={v}" for k, v in r.shapes.items())
    out.append(f"spatial schedule of {r.spec} on {arch.name} ({arch.source}), mapping "
               f"{r.mapping} ({r.schedule})")
    out.append(f"  shapes: {shapes}" + (f"; x {r.instances:g} instances (B x H)"
                                         if r.instances != 1 else ""))
    for n in r.notes:
        out.append(f"  note: {n}")
    out.append(f"  roles: sequence rank {cm.seq_rank} ({', '.join(sorted(cm.seq_vars))}; "
               f"{cm.passes} pass{'es' if cm.passes != 1 else ''}), query {plan.query or '-'}"
               + (f", batch {', '.join(plan.batch)}" if plan.batch else ""))
    out.append("")
    out.append("binding")
    w = min(48, max((len(cm.einsums[c.index].text) for c in r.einsums), default=10))
    out.append(f"  {'line':>4}  {'Einsum':<{w}}  {'array':<5}  {'spatial':<9}  "
               f"{'stage' if r.schedule != 'unfused' else 'phase':>5}  {'cyc/tile':>9}  why")
    for c in r.einsums:
        e = cm.einsums[c.index]
        text = e.text if len(e.text) <= w else e.text[:w - 1] + "…"
        where = c.array or "-"
        st = (c.phase + 1 if r.schedule == "unfused" else c.stage) if c.array else ""
        cpt = f"{c.cycles / c.tiles:,.1f}" if c.tiles else ""
        out.append(f"  {e.line or '':>4}  {text:<{w}}  {where:<5}  "
                   f"{','.join(c.spatial) if c.array else '':<9}  {st!s:>5}  {cpt:>9}  "
                   f"{plan.reasons.get(c.index, '')}")
    out.append("")
    out.append("loop nest")
    out.extend("  " + s for s in loop_nest(r, cm))
    out.append("")
    if r.schedule in ("interleaved", "pipelined"):
        out.append(_epoch_text(r))
        out.append("")
    elif r.schedule == "sequential":
        sp = r.epoch.get("tile_span_cycles", 0.0)
        fd = r.epoch.get("fill_drain_cycles", 0)
        out.append(f"tile (sequential): the Einsums of one tile take {sp:,.1f} cycles on the "
                   f"critical path, then the 2D array fills/drains for {fd} cycles before the "
                   "next tile starts")
        out.append("")
    out.append(_buffer_text(r))
    out.append("")
    out.append("DRAM transfers")
    for t, b in sorted(r.dram_by_tensor.items(), key=lambda kv: -kv[1]):
        out.append(f"  {t:<16} {_fmt_bytes(b):>14}")
    out.append(f"  {'total':<16} {_fmt_bytes(r.dram_bytes):>14}  ({r.dram_bytes:,.0f} bytes)")
    out.append("")
    out.append("costs")
    out.append(f"  latency      {_fmt_s(r.latency_s)}  (compute {_fmt_s(r.compute_s)}, memory "
               f"{_fmt_s(r.memory_s)}); bottleneck: {r.bottleneck}")
    out.append("  utilization  " + ", ".join(f"{a} {u:.3f}" for a, u in r.util.items()))
    out.append(f"  energy       {r.energy_pj:,.4g} pJ  (" + ", ".join(
        f"{k} {v / r.energy_pj:.1%}" for k, v in r.energy_by_component.items() if r.energy_pj)
        + ")")
    return "\n".join(out) + "\n"


def _epoch_text(r: Result) -> str:
    t = r.tile
    depth = t.get("depth", 1)
    lines = [f"steady-state epoch ({r.schedule}): {depth} tile{'s' if depth != 1 else ''} in "
             f"flight; in epoch i the work of stage s belongs to tile i-s"]
    by: dict[str, dict[int, list[str]]] = {}
    epi = []
    for c in r.einsums:
        if c.array and c.tiles < t.get("tiles", 0):
            epi.append(c)
        elif c.array:
            by.setdefault(c.array, {}).setdefault(c.stage, []).append(c.name)
    per = r.epoch.get("per_array_cycles", {})
    for a, stages in by.items():
        parts = []
        for s in sorted(stages):
            tile = "i" if s == 0 else f"i-{s}"
            parts.append(" -> ".join(f"{n}[{tile}]" for n in stages[s]))
        lines.append(f"  {a}: " + "  |  ".join(parts) + f"   ({per.get(a, 0.0):,.1f} cycles/tile)")
    for c in epi:
        lines.append(f"  {c.array}: {c.name} once per query tile after its last sequence tile "
                     f"({c.cycles / c.tiles:,.1f} cycles; included above, amortized)")
    busiest = max(per.values(), default=0.0)
    lines.append(f"  epoch = {busiest:,.1f} cycles per tile (the busiest array); "
                 f"{t.get('tiles', 0):,.0f} tiles")
    return "\n".join(lines)


def _buffer_text(r: Result) -> str:
    b = r.buffer
    if not b:
        return "buffer: -"
    lines = [f"buffer: {_fmt_bytes(b['used_bytes'])} of {_fmt_bytes(b['capacity_bytes'])} "
             f"({b['occupancy']:.1%})" + (f", {b['queries_resident']:,} queries resident"
                                          if b.get("queries_resident") else "")
             + (f", plan: {b['plan']}" if b.get("plan") else "")
             + (f" (largest phase: {b['phase']})" if b.get("phase") else "")]
    for a in b.get("allocations", []):
        per = a.get("words_per_query")
        detail = f"{per:,.6g} words/query" if per is not None else f"{a['words']:,.0f} words"
        lines.append(f"  {a['tensor']:<10} {a['role']:<44} {detail:>22}  "
                     f"{_fmt_bytes(a['bytes']):>12}")
    return "\n".join(lines)

