"""Architecture files: a documented, Timeloop-flavoured YAML schema (docs/spatial.md §2).

    name: fusemax
    clock_hz: 940e6
    word_bytes: 2
    dram:   {bandwidth_bytes_per_s: 429496729600, access_bytes: 8, energy_pj_per_access: 249.6}
    buffer: {capacity_bytes: 16777216, row_words: 256, read_pj_per_row: 484.97,
             write_pj_per_row: 451.30, area_um2_per_mib: 954723}
    arrays:
      2d:
        kind: 2d                   # 2d (rows x cols) or 1d (pes)
        shape: [256, 256]
        fill_drain_cycles: 256     # default: max(rows, cols)
        registers: {entries: 12, read_pj: 0.653, write_pj: 0.570,
                    reads_per_action: 1, writes_per_action: 1, area_um2: 4256}
        units:                     # functional units of one PE: actions (pJ each), area
          mac: {actions: {mac: 17.1645, add: 8.3395}, area_um2: 1545}
          max: {actions: {max: 0.028036}, area_um2: 49.3}
        ops:                       # op class of the cascade -> unit actions (1 cycle each)
          mac: {mac.mac: 1}
          exp: {mac.mac: 6}        # Taylor series: 6 sequential multiply-accumulates
        issue: parallel            # units of a PE work concurrently (or: serial)
    links: [[2d, 1d]]              # arrays that pass data directly, not via the buffer

Op classes are those of `einsumc.analysis.counts` (mac, mul, add, max, exp, div, compare,
and other function names); an Einsum may only be bound to an array whose `ops` cover it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from .yamlio import Fields, check_int, check_number, fail, load_yaml

ARRAY_KINDS = ("2d", "1d")


@dataclass(frozen=True)
class Unit:
    name: str
    actions: dict[str, float]          # action -> pJ
    area_um2: float = 0.0


@dataclass(frozen=True)
class Registers:
    entries: int
    read_pj: float
    write_pj: float
    reads_per_action: float = 1.0
    writes_per_action: float = 1.0
    area_um2: float = 0.0


@dataclass(frozen=True)
class Array:
    name: str
    kind: str                          # "2d" | "1d"
    shape: tuple[int, ...]             # (rows, cols) or (pes,)
    units: dict[str, Unit]
    ops: dict[str, dict[tuple[str, str], float]]   # op -> {(unit, action): count}
    registers: Registers
    fill_drain_cycles: int
    issue: str = "parallel"            # "parallel" | "serial"

    @property
    def pes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def occupancy(self, op: str) -> dict[str, float]:
        """Cycles of each unit one `op` takes."""
        out: dict[str, float] = {}
        for (u, _a), n in self.ops[op].items():
            out[u] = out.get(u, 0.0) + n
        return out

    def op_energy(self, op: str) -> float:
        return sum(self.units[u].actions[a] * n for (u, a), n in self.ops[op].items())

    def op_actions(self, op: str) -> float:
        return sum(self.ops[op].values())

    def area_um2(self) -> float:
        pe = sum(u.area_um2 for u in self.units.values()) + self.registers.area_um2
        return pe * self.pes


@dataclass(frozen=True)
class Architecture:
    name: str
    clock_hz: float
    word_bytes: int
    dram_bw: float                     # bytes / s
    dram_access_bytes: int
    dram_pj_per_access: float
    buffer_bytes: int
    buffer_row_words: int
    buffer_read_pj_row: float
    buffer_write_pj_row: float
    buffer_area_um2_per_mib: float
    arrays: dict[str, Array]
    links: frozenset[frozenset[str]] = field(default_factory=frozenset)
    source: str = "<arch>"

    def linked(self, a: str, b: str) -> bool:
        return a == b or frozenset((a, b)) in self.links

    def first(self, kind: str) -> Array | None:
        return next((a for a in self.arrays.values() if a.kind == kind), None)

    def area_um2(self) -> float:
        buf = self.buffer_area_um2_per_mib * self.buffer_bytes / 2 ** 20
        return buf + sum(a.area_um2() for a in self.arrays.values())


def load_arch(path: str | Path, overrides: dict | None = None) -> Architecture:
    """Load and validate an architecture file; `overrides` (dotted field -> value, e.g.
    `{"arrays.2d.shape": [128, 128]}`) are applied before validation (design sweeps)."""
    data = load_yaml(path, "architecture")
    if overrides:
        data = apply_overrides(data, overrides, str(path))
    return parse_arch(data, str(path))


def apply_overrides(data: dict, overrides: dict, file: str) -> dict:
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        parts = str(key).split(".")
        cur = data
        for i, p in enumerate(parts[:-1]):
            if not isinstance(cur, dict) or p not in cur:
                raise fail(f"{file}: {'.'.join(parts[:i + 1])}",
                           f"override '{key}' names a field the file does not have")
            cur = cur[p]
        if not isinstance(cur, dict):
            raise fail(f"{file}: {key}", "override names a field inside a non-mapping")
        cur[parts[-1]] = value
    return data


def parse_arch(data: dict, file: str) -> Architecture:
    f = Fields(data, file)
    name = f.string("name", Path(file).stem)
    clock = f.number("clock_hz")
    word = f.integer("word_bytes")
    d = f.sub("dram")
    bw = d.number("bandwidth_bytes_per_s")
    acc = d.integer("access_bytes", word)
    dpj = d.number("energy_pj_per_access", allow_zero=True)
    d.done()
    b = f.sub("buffer")
    cap = b.integer("capacity_bytes")
    row = b.integer("row_words", 1)
    rpj = b.number("read_pj_per_row", allow_zero=True)
    wpj = b.number("write_pj_per_row", allow_zero=True)
    barea = b.number("area_um2_per_mib", 0.0, allow_zero=True)
    b.done()
    arrs = f.sub("arrays")
    if not arrs.data:
        raise fail(arrs.where(), "at least one array is required")
    arrays: dict[str, Array] = {}
    for an in list(arrs.data):
        arrays[str(an)] = _parse_array(str(an), arrs.sub(an))
    arrs.done()
    links_raw = f.raw("links", [])
    if not isinstance(links_raw, list):
        raise fail(f.where("links"), "expected a list of [array, array] pairs")
    links = set()
    for i, pair in enumerate(links_raw):
        w = f.where(f"links[{i}]")
        if not isinstance(pair, list) or len(pair) != 2:
            raise fail(w, "expected a pair [array, array]")
        for a in pair:
            if str(a) not in arrays:
                raise fail(w, f"unknown array '{a}' (arrays: {', '.join(arrays)})")
        links.add(frozenset(str(a) for a in pair))
    f.done()
    return Architecture(name, clock, word, bw, acc, dpj, cap, row, rpj, wpj, barea, arrays,
                        frozenset(links), file)


def _parse_array(name: str, f: Fields) -> Array:
    kind = f.string("kind", choices=ARRAY_KINDS)
    shape_raw = f.raw("shape")
    want = 2 if kind == "2d" else 1
    if isinstance(shape_raw, int) and want == 1:
        shape_raw = [shape_raw]
    if not isinstance(shape_raw, list) or len(shape_raw) != want:
        raise fail(f.where("shape"), f"a {kind} array needs a shape of {want} integer"
                                     f"{'s' if want > 1 else ''} ([rows, cols] or [pes])")
    shape = tuple(check_int(v, f.where(f"shape[{i}]")) for i, v in enumerate(shape_raw))
    units: dict[str, Unit] = {}
    us = f.sub("units")
    if not us.data:
        raise fail(us.where(), "at least one functional unit is required")
    for un in list(us.data):
        u = us.sub(un)
        acts = u.sub("actions")
        if not acts.data:
            raise fail(acts.where(), "at least one action (name: pJ) is required")
        actions = {str(a): acts.number(a, allow_zero=True) for a in list(acts.data)}
        acts.done()
        units[str(un)] = Unit(str(un), actions, u.number("area_um2", 0.0, allow_zero=True))
        u.done()
    us.done()
    ops: dict[str, dict[tuple[str, str], float]] = {}
    osec = f.sub("ops")
    if not osec.data:
        raise fail(osec.where(), "at least one op (op: {unit.action: count}) is required")
    for on in list(osec.data):
        o = osec.sub(on)
        if not o.data:
            raise fail(o.where(), "an op needs at least one unit action")
        spec: dict[tuple[str, str], float] = {}
        for ua in list(o.data):
            w = o.where(str(ua))
            un, dot, act = str(ua).partition(".")
            if not dot:
                raise fail(w, f"expected UNIT.ACTION (e.g. mac.mac), got '{ua}'")
            if un not in units:
                raise fail(w, f"unknown unit '{un}' (units: {', '.join(units)})")
            if act not in units[un].actions:
                raise fail(w, f"unit '{un}' has no action '{act}' (actions: "
                              f"{', '.join(units[un].actions)})")
            spec[(un, act)] = check_number(o.raw(ua), w)
        o.done()
        ops[str(on)] = spec
    osec.done()
    r = f.sub("registers")
    regs = Registers(r.integer("entries"), r.number("read_pj", allow_zero=True),
                     r.number("write_pj", allow_zero=True),
                     r.number("reads_per_action", 1, allow_zero=True),
                     r.number("writes_per_action", 1, allow_zero=True),
                     r.number("area_um2", 0.0, allow_zero=True))
    r.done()
    fd = f.integer("fill_drain_cycles", max(shape), minimum=0)
    issue = f.string("issue", "parallel", choices=("parallel", "serial"))
    f.done()
    return Array(name, kind, shape, units, ops, regs, fd, issue)
