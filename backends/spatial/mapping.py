"""Mapping files: how a cascade runs on an architecture (docs/spatial.md §3).

    name: fusemax
    schedule: interleaved   # interleaved | pipelined | sequential | unfused
    binding: {LM: 2d}       # Einsum (the tensor it writes) -> array; the rest is derived
    spatial:                # rank variables laid on each array dimension (default derived)
      2d: [m0, p]           # rows <- m0, cols <- p
      1d: [p]
    tiles: {M0: rows}       # extents of partition ranks: an integer, `rows` or `cols`
    query_block: auto       # P1: auto (largest that fits the buffer) or an integer
    spill: auto             # multi-pass fibers that do not fit: auto | never | partial | full
    roles: {query: p}       # override the derived query variable (the queries of a tile)

Every field is optional: an empty mapping gives the default derived from the cascade and
the architecture (`derive` in `model.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .yamlio import Fields, check_int, fail, load_yaml

SCHEDULES = ("interleaved", "pipelined", "sequential", "unfused")
SPILLS = ("auto", "never", "partial", "full")


@dataclass(frozen=True)
class Mapping:
    name: str = "default"
    schedule: str = "interleaved"
    binding: dict[str, str] = field(default_factory=dict)
    spatial: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tiles: dict[str, int | str] = field(default_factory=dict)
    query_block: int | None = None
    spill: str = "auto"
    roles: dict[str, str] = field(default_factory=dict)
    source: str = "<default mapping>"

    def where(self, fieldpath: str) -> str:
        return f"{self.source}: {fieldpath}"


def load_mapping(path: str | Path | None) -> Mapping:
    if path is None:
        return Mapping()
    return parse_mapping(load_yaml(path, "mapping"), str(path))


def parse_mapping(data: dict, file: str) -> Mapping:
    f = Fields(data, file)
    name = f.string("name", Path(file).stem)
    schedule = f.string("schedule", "interleaved", choices=SCHEDULES)
    binding = {}
    b = f.sub("binding", {})
    for k in list(b.data):
        binding[str(k)] = b.string(k)
    b.done()
    spatial = {}
    s = f.sub("spatial", {})
    for k in list(s.data):
        v = s.raw(k)
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
            raise fail(s.where(str(k)), "expected a list of rank variables, one per array "
                                        "dimension (e.g. [m0, p])")
        spatial[str(k)] = tuple(v)
    s.done()
    tiles: dict[str, int | str] = {}
    t = f.sub("tiles", {})
    for k in list(t.data):
        v = t.raw(k)
        if isinstance(v, str):
            if v not in ("rows", "cols"):
                raise fail(t.where(str(k)), f"expected an integer, 'rows' or 'cols', got '{v}'")
            tiles[str(k)] = v
        else:
            tiles[str(k)] = check_int(v, t.where(str(k)))
    t.done()
    qb = f.raw("query_block", "auto")
    if qb == "auto" or qb is None:
        query_block = None
    else:
        query_block = check_int(qb, f.where("query_block"))
    spill = f.string("spill", "auto", choices=SPILLS)
    roles = {}
    r = f.sub("roles", {})
    for k in ("query",):
        if r.has(k):
            roles[k] = r.string(k)
    r.done()
    f.done()
    return Mapping(name, schedule, binding, spatial, tiles, query_block, spill, roles, file)
