"""Transforms: pure functions `Program -> Program`, each in its own module.

    partition:M=64      split rank M into tiles, M -> M1, M0 (partition.py)
    defer-division      divide after the reduction, FuseMax §IV-D (defer_division.py)
    online              running max and corrected running sums, Cascade 5 (online.py)
    two-pass            local maxima, a global max, a correcting pass (two_pass.py)

`apply(prog, "partition:M=64,defer-division,online")` runs a chain; `optimize(prog)` (the
CLI's `--opt`) applies every legal transform toward the fewest passes. Each output is a
checked program with the same inputs, params and outputs, printable as `.ein`.
"""
from __future__ import annotations

from ..diagnostics import EinsumcError, error
from ..ir.printer import print_einsum
from ..ir.program import Program
from .base import TransformRefused
from .defer_division import defer_division
from .online import blockers as online_blockers
from .online import find as find_normalisers
from .online import online
from .partition import partition
from .two_pass import two_pass

DEFAULT_TILE = 64
TRANSFORMS = ("partition", "defer-division", "online", "two-pass")


def parse_chain(text: str) -> list[tuple[str, dict[str, int]]]:
    """`partition:M=64,defer-division` -> [("partition", {"M": 64}), ("defer-division", {})]."""
    out = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, opts = item.partition(":")
        name = name.strip().replace("_", "-")
        if name not in TRANSFORMS:
            raise EinsumcError([error(f"unknown transform '{name}'; transforms: "
                                      + ", ".join(TRANSFORMS))])
        args: dict[str, int] = {}
        for kv in filter(None, opts.split(":")):
            k, sep, v = kv.partition("=")
            if not sep:
                raise EinsumcError([error(f"transform option '{kv}' must read RANK=TILE")])
            try:
                args[k.strip()] = int(v)
            except ValueError:
                raise EinsumcError([error(f"transform option '{kv}': '{v}' is not an integer")]) \
                    from None
        out.append((name, args))
    return out


def apply(prog: Program, chain: str | list) -> Program:
    """Apply a chain of named transforms (each must apply, or it says why not)."""
    steps = parse_chain(chain) if isinstance(chain, str) else chain
    for name, args in steps:
        if name == "partition":
            ranks = args or {r: DEFAULT_TILE for r in _softmax_ranks(prog)}
            if not ranks:
                raise EinsumcError([error("partition: name the rank and tile, e.g. "
                                          "partition:M=64")], prog.source)
            for rank, tile in ranks.items():
                prog = partition(prog, rank, tile)
        elif name == "defer-division":
            prog = defer_division(prog)
        elif name == "online":
            prog = online(prog)
        elif name == "two-pass":
            prog = two_pass(prog)
    return prog


def _softmax_ranks(prog: Program) -> list[str]:
    """Unpartitioned ranks that a max reduces (the sequence rank of a softmax)."""
    from ..analysis.ranks import rank_vars
    parts = {v for r in prog.ranks for kids in rank_vars(prog, r.name).children.values()
             for v in kids}
    out = []
    for r in prog.ranks:
        if r.var in parts or rank_vars(prog, r.name).children:
            continue  # already partitioned, or a part of another rank
        if any(r.var in red.vars and red.op == "max" for e in prog.einsums for red in e.reduced):
            if not any(r.var in d.indices for d in prog.outputs):
                out.append(r.name)
    return out


def optimize(prog: Program, tile: int = DEFAULT_TILE) -> tuple[Program, list[str]]:
    """Every legal transform toward one pass: defer divisions, partition the softmax
    ranks, build the normalisers online. Returns the program and notes on what blocked
    further progress."""
    notes: list[str] = []
    prog = defer_division(prog, required=False)
    for rank in _softmax_ranks(prog):
        try:
            prog = partition(prog, rank, tile)
        except TransformRefused as exc:
            notes.append(f"rank {rank} is not partitioned: {exc.diagnostics[0].message}")
    for _ in range(8):  # one normaliser at a time
        found, _ = find_normalisers(prog)
        if not found or not found[0][5]:
            break
        blocked = online_blockers(prog)
        try:
            prog = online(prog)
        except TransformRefused as exc:
            notes.append(str(exc))
            break
        for b in blocked:
            notes.append(f"`{print_einsum(b)}` reads the normalised values whole, so they are "
                         "recomputed after the final running max: a second pass that no "
                         "transform removes")
    return prog, notes


__all__ = ["apply", "optimize", "parse_chain", "partition", "defer_division", "online",
           "two_pass", "TRANSFORMS", "TransformRefused"]
