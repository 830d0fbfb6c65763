"""Fusion grouping: the cascade split into kernels, for backends to consume.

Einsums of one pass over a rank may fuse (one traversal produces and consumes a tile of
every intermediate at a time); Einsums of different passes may not (FuseMax §III-B). The
kernels are therefore the pass groups of the analysis's primary rank, in dependency order:
maximal, and legal for every mapping.
"""
from __future__ import annotations

from ..ir.program import Program


def kernels(prog: Program, rank: str | None = None) -> list[list[int]]:
    """Einsum indices per kernel (maximal fusion-legal groups), in execution order."""
    from ..analysis import analyze, primary_rank
    result = analyze(prog, rank=rank)
    main = rank or primary_rank(prog, result.ranks)
    if main is None:
        return [list(range(len(prog.einsums)))]
    return result.ranks[main].groups()
