"""Read-only analyses of a checked cascade: passes, buffer bounds, traffic, op counts.

    result = analyze(prog, rank="M", shapes={"M": 65536, "P": 65536}, capacity=2**20)
    print(result.report());  json.loads(result.to_json())

Everything is symbolic (sympy expressions in the extents); `shapes` only substitutes
numbers at the end, so the cost does not depend on the extents.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import sympy

from ..diagnostics import EinsumcError, error
from ..ir.printer import print_einsum
from ..ir.program import Program
from .counts import CLASSES, extent_symbols, op_counts
from .footprint import DTYPE_BYTES, Footprint, Traffic, best_schedule, footprint, traffic
from .passes import RankPasses, analyze_passes

SCHEMA = 1


@dataclass
class Analysis:
    program: Program
    ranks: dict[str, RankPasses]
    footprints: dict[str, Footprint]
    traffic: dict[str, Traffic]
    ops: dict[str, sympy.Expr]
    ops_per_einsum: list[dict[str, sympy.Expr]]
    shapes: dict[str, int] = field(default_factory=dict)
    capacity: int | None = None

    @property
    def passes(self) -> dict[str, int]:
        return {r: rp.passes for r, rp in self.ranks.items()}

    # ---------------------------------------------------------------- numbers
    def _subs(self) -> dict:
        from ..ir.symbolic import evaluate
        subs = {}
        for k, v in self.shapes.items():
            subs[sympy.Symbol(k, integer=True, positive=True)] = v
            subs[sympy.Symbol(k, real=True)] = v
        params: dict[str, float] = {}
        for prm in self.program.params:  # constant params, evaluated with the extents
            if prm.value is not None:
                try:
                    params[prm.name] = evaluate(prm.value, self.shapes, params)
                except (KeyError, ZeroDivisionError, ValueError):
                    continue
                subs[sympy.Symbol(prm.name, real=True)] = params[prm.name]
        return subs

    def value(self, expr) -> int | float | None:
        """An expression's number under `shapes`, or None when some extent is unbound."""
        if not self.shapes:
            return None
        v = sympy.sympify(expr).subs(self._subs())
        if v.free_symbols:
            return None
        v = sympy.nsimplify(v) if not v.is_Float else v
        return int(v) if v.is_integer else float(v)

    def _where(self, i: int) -> dict:
        e = self.program.einsums[i]
        return {"index": i, "einsum": print_einsum(e), "line": e.span.line if e.span else None}

    def intensity(self, rank: str) -> sympy.Expr:
        flops = sum((2 * v if k == "mac" else v for k, v in self.ops.items()), sympy.Integer(0))
        return sympy.simplify(flops / self.traffic[rank].compulsory_bytes)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        out: dict = {"schema": SCHEMA,
                     "spec": self.program.source.name if self.program.source else None,
                     "passes": self.passes, "chains": {}, "einsum_passes": {},
                     "tensor_passes": {}, "groups": {}, "completions": {}, "footprint": {},
                     "traffic": {}}
        for r, rp in self.ranks.items():
            out["chains"][r] = [{"tensor": c.tensor, "source": c.source or c.tensor,
                                 "first_read": self._where(c.first_reader),
                                 "completion": self._where(c.completion),
                                 "reread": self._where(c.reader)} for c in rp.chains]
            out["einsum_passes"][r] = [{**self._where(i), "pass": rp.einsum_pass[i],
                                        "full_fiber_reads": list(rp.full_reads[i])}
                                       for i in sorted(rp.einsum_pass)]
            out["tensor_passes"][r] = rp.tensor_passes
            out["completions"][r] = [self._where(i) for i in rp.completions]
            out["groups"][r] = [[self._where(i)["index"] for i in g] for g in rp.groups()]
            if r not in self.footprints:
                continue
            fp = self.footprints[r]
            out["footprint"][r] = {
                "unit_ranks": list(fp.unit_vars),
                "minimum_elements_per_unit": str(fp.minimum),
                "per_group": [{"pass": rp.einsum_pass[g[0]], "einsums": list(g),
                               "per_unit": str(u), "shared": str(s)}
                              for g, u, s in zip(rp.groups(), fp.per_group_unit,
                                                 fp.per_group_shared)],
                "buffered_fibers": {t: str(v) for t, v in fp.buffered_fibers.items()},
                "effective_extent": {t: str(v) for t, v in fp.effective_extent.items()
                                     if t in fp.buffered_fibers},
            }
            tr = self.traffic[r]
            out["traffic"][r] = {"compulsory_bytes": str(tr.compulsory_bytes),
                                 "spill_extra_bytes": str(tr.spill_bytes),
                                 "intensity_flops_per_byte": str(self.intensity(r))}
            if self.shapes:
                out["footprint"][r]["minimum_bytes"] = self._bytes(fp.minimum)
                out["traffic"][r]["compulsory_bytes_value"] = self.value(tr.compulsory_bytes)
                out["traffic"][r]["spill_extra_bytes_value"] = self.value(tr.spill_bytes)
                if self.capacity is not None and self.value(tr.compulsory_bytes) is not None:
                    vals = {k: v for k, v in self.shapes.items()}
                    out["traffic"][r]["schedule"] = best_schedule(
                        self.program, rp, fp, self.capacity, vals, self._subs())
        out["ops"] = {k: str(v) for k, v in self.ops.items()}
        out["ops_per_einsum"] = [{**self._where(i), **{k: str(v) for k, v in c.items()}}
                                 for i, c in enumerate(self.ops_per_einsum)]
        if self.shapes:
            out["shapes"] = dict(self.shapes)
            out["ops_value"] = {k: self.value(v) for k, v in self.ops.items()}
        return out

    def _bytes(self, elements) -> int | None:
        v = self.value(elements)
        return None if v is None else int(v) * 4

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    # ---------------------------------------------------------------- text
    def report(self) -> str:
        name = self.program.source.name if self.program.source else "<spec>"
        shown = ", ".join(f"{k}={int(v) if float(v).is_integer() else v}"
                          for k, v in self.shapes.items())
        lines = [f"analysis of {name}" + (f"  ({shown})"
                                           if self.shapes else "")]
        for r, rp in self.ranks.items():
            lines.append("")
            lines.append(f"rank {r}: {rp.passes} pass{'es' if rp.passes != 1 else ''}"
                         f"  (variables {', '.join(sorted(rp.vars.vars))})")
            w = max((len(print_einsum(self.program.einsums[i])) for i in rp.einsum_pass),
                    default=10)
            w = min(w, 72)
            lines.append(f"  {'line':>4}  {'Einsum':<{w}}  pass  reads whole fiber of")
            for i in sorted(rp.einsum_pass):
                e = self.program.einsums[i]
                text = print_einsum(e)
                text = text if len(text) <= w else text[:w - 1] + "…"
                mark = " *" if i in rp.completions else ""
                lines.append(f"  {e.span.line if e.span else '':>4}  {text:<{w}}  {rp.einsum_pass[i]:>4}"
                             f"  {', '.join(rp.full_reads[i])}{mark}")
            lines.append("  (* completes a reduction over the whole rank)")
            for c in rp.chains:
                ln = lambda i: self.program.einsums[i].span.line  # noqa: E731
                src = c.source or c.tensor
                again = (f"reads {c.tensor} again" if src == c.tensor else
                         f"reads {c.tensor}, computed from {src}, again")
                lines.append(f"  extra pass: {src} is read whole by line {ln(c.first_reader)}, "
                             f"line {ln(c.completion)} completes its reduction, and line "
                             f"{ln(c.reader)} {again}")
            multi = {t: k for t, k in rp.tensor_passes.items() if k > 1}
            if multi:
                lines.append("  fibers read in several passes: "
                             + ", ".join(f"{t} ({k}x)" for t, k in multi.items()))
            lines.append("  fusion groups (one traversal each): " + " | ".join(
                ", ".join(self.program.einsums[i].tensor for i in g) for g in rp.groups()))
            if r not in self.footprints:
                continue
            fp = self.footprints[r]
            unit = ", ".join(fp.unit_vars) or "none"
            lines.append(f"  minimum live footprint per unit ({unit}): {fp.minimum} elements"
                         + (f" = {self._bytes(fp.minimum)} bytes" if self.shapes and
                            self._bytes(fp.minimum) is not None else ""))
            tr = self.traffic[r]
            lines.append(f"  compulsory DRAM traffic: {tr.compulsory_bytes} bytes"
                         + (f" = {self.value(tr.compulsory_bytes)}" if self.shapes and
                            self.value(tr.compulsory_bytes) is not None else ""))
            if tr.spill_bytes != 0:
                lines.append(f"  or spill the multi-pass fibers: +{tr.spill_bytes} bytes"
                             + (f" = +{self.value(tr.spill_bytes)}" if self.shapes and
                                self.value(tr.spill_bytes) is not None else ""))
            if self.capacity is not None and self.shapes:
                sched = best_schedule(self.program, rp, fp, self.capacity, dict(self.shapes),
                                      self._subs())
                if sched.get("error"):
                    lines.append(f"  with {self.capacity} bytes on chip: {sched['error']}")
                elif sched["best"] is None:
                    lines.append(f"  with {self.capacity} bytes on chip: no schedule fits "
                                 "(the minimum footprint is larger)")
                for plan, d in sched["plans"].items():
                    lines.append(f"  with {self.capacity} bytes on chip, {plan}: "
                                 f"{d['units_in_flight']} units in flight, {d['dram_bytes']} bytes"
                                 + ("  <- best" if plan == sched["best"] else ""))
            lines.append(f"  arithmetic intensity: {self.intensity(r)} flop/byte")
        lines.append("")
        lines.append("operation counts (dense; a filter's removed points included):")
        for k, v in self.ops.items():
            num = self.value(v) if self.shapes else None
            lines.append(f"  {k:<8} {v}" + (f" = {num:,}" if isinstance(num, int) else ""))
        return "\n".join(lines) + "\n"


def analyze(prog: Program, rank: str | None = None, shapes: dict[str, int] | None = None,
            capacity: int | None = None) -> Analysis:
    """Passes, buffer bounds, traffic and op counts of a cascade (see module docstring)."""
    shapes = dict(shapes or {})
    names = {r.name for r in prog.ranks} | {p.name for p in prog.params}
    for k, v in shapes.items():
        if k not in names:
            raise EinsumcError([error(f"--shape names '{k}', which is not a rank of this spec")],
                               prog.source)
    _check_shapes(prog, shapes)
    ranks = analyze_passes(prog, rank)
    main = primary_rank(prog, ranks) if rank is None else rank
    fps = {main: footprint(prog, ranks[main])} if main else {}
    trs = {main: traffic(prog, ranks[main])} if main else {}
    per, total = op_counts(prog)
    return Analysis(prog, ranks, fps, trs, total, per, shapes, capacity)


def primary_rank(prog: Program, ranks: dict[str, RankPasses]) -> str | None:
    """The rank buffer bounds and traffic are reported for: the most passes, then a rank
    that is partitioned or iterated (the sequence rank of attention), then the most
    Einsums reading its whole fibers."""
    iter_vars = set(prog.iterative_vars)

    def key(r: str):
        rp = ranks[r]
        structured = bool(rp.vars.children) or bool(rp.vars.vars & iter_vars)
        readers = sum(1 for t in rp.full_reads.values() if t)
        return (rp.passes, structured, readers, r)

    return max(ranks, key=key) if ranks else None


def _check_shapes(prog: Program, shapes: dict[str, int]) -> None:
    """Shapes must satisfy the declarations (fixed and derived extents)."""
    if not shapes:
        return
    from ..inputs import resolve_extents
    given = {k: v for k, v in shapes.items() if k in {r.name for r in prog.ranks}}
    fixed = {r.name for r in prog.ranks if r.extent is not None}
    resolved = resolve_extents_partial(prog, {k: v for k, v in given.items() if k not in fixed})
    for k, v in given.items():
        if k in fixed and k in resolved and resolved[k] != v:
            r = prog.rank(k)
            raise EinsumcError([error(f"--shape gives {k} = {v}, but the spec declares {k} = "
                                      f"{resolved[k]}", r.span)], prog.source)
    shapes.update({k: v for k, v in resolved.items() if k not in shapes})
    del resolve_extents


def resolve_extents_partial(prog: Program, given: dict[str, int]) -> dict[str, int]:
    from ..ir.symbolic import evaluate
    ext = dict(given)
    for _ in range(len(prog.ranks) + 1):
        for r in prog.ranks:
            if r.name in ext or r.extent is None:
                continue
            try:
                v = evaluate(r.extent, ext, {})
            except KeyError:
                continue
            if not isinstance(v, int) or v < 0:
                raise EinsumcError([error(f"rank {r.name} evaluates to {v}, not a non-negative "
                                          "integer, with the given shapes", r.span)], prog.source)
            ext[r.name] = v
    return ext


__all__ = ["analyze", "Analysis", "CLASSES", "DTYPE_BYTES", "extent_symbols"]
