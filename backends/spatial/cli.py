"""Command-line entry points of the spatial backend, wired into `einsumc` by einsumc/cli.py:

    register(sub)            adds `einsumc simulate` and `einsumc explore`
    compile_spatial(args)    `einsumc compile SPEC --target spatial --arch A [--mapping M]
                             [--emit text|json|timeloop] [--shape ...] [-o OUT]`

Every function returns an exit code and raises `EinsumcError` for a user error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ...diagnostics import EinsumcError, error

def parse_shape(text: str | None, flag: str = "--shape") -> dict[str, int]:
    """`M=65536,P=1M,B=64` -> {"M": 65536, "P": 1048576, "B": 64} (K/M/G = 2**10/20/30);
    extents must be positive."""
    from ...cli import _parse_assignments
    out = _parse_assignments(text, flag.lstrip("-"), int)
    for name, n in out.items():
        if n < 1:
            raise EinsumcError([error(f"{flag}: {name} must be positive, got {n}")])
    return out


def _load(spec: str, args=None):
    """Load a spec (`-`: standard input), then apply `--transform` / `--opt` if given."""
    from ...driver import load
    prog = load(sys.stdin.read(), "<stdin>") if spec == "-" else load(Path(spec))
    for w in prog.warnings:
        print(w.render(prog.source), file=sys.stderr)
    opt, chain = getattr(args, "opt", False), getattr(args, "transform", None)
    if (opt or chain) and hasattr(prog, "transformed"):
        prog = prog.transformed(bool(opt), chain)
    return prog


def compile_spatial(args) -> int:
    """`einsumc compile SPEC --target spatial --arch ARCH [--mapping MAP] [--emit FMT] [-o OUT]`."""
    from .target import SpatialTarget, write_timeloop
    prog = _load(args.spec, args)
    arch = getattr(args, "arch", None)
    mapping = getattr(args, "mapping", None)
    fmt = getattr(args, "emit", None) or "text"
    shapes = parse_shape(getattr(args, "shape", None))
    out = getattr(args, "output", None)
    t = SpatialTarget()
    if fmt == "timeloop":
        files = t.timeloop_files(prog, shapes, arch, mapping)
        if out:
            paths = write_timeloop(files, out)
            print(f"wrote {len(paths)} Timeloop problem file{'s' if len(paths) != 1 else ''} "
                  f"to {out}", file=sys.stderr)
        else:
            sys.stdout.write(t.emit_schedule(prog, arch, mapping, "timeloop", shapes))
        return 0
    text = t.emit(prog, arch, mapping, fmt, shapes)
    if out:
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_simulate(args) -> int:
    from .cascade import cascade_model
    from .report import to_dict
    from .target import SpatialTarget, _arch
    prog = _load(args.spec, args)
    shapes = parse_shape(args.shape)
    arch = _arch(args.arch)
    r = SpatialTarget().simulate(prog, arch, args.mapping, shapes)
    if args.json:
        d = to_dict(r, cascade_model(prog), arch)
        sys.stdout.write(json.dumps(d, indent=2, default=str) + "\n")
        return 0
    sys.stdout.write(summary_text(r, arch))
    return 0


def summary_text(r, arch) -> str:
    from .report import _fmt_bytes, _fmt_s
    lines = [f"{r.spec} on {r.arch}, mapping {r.mapping} ({r.schedule}); "
             + ", ".join(f"{k}={v}" for k, v in r.shapes.items())
             + (f"; x {r.instances:g} instances" if r.instances != 1 else "")]
    for n in r.notes:
        lines.append(f"  note: {n}")
    lines.append(f"  latency      {_fmt_s(r.latency_s)}  (compute {_fmt_s(r.compute_s)}, "
                 f"memory {_fmt_s(r.memory_s)})")
    lines.append(f"  bottleneck   {r.bottleneck}")
    lines.append(f"  utilization  2D {r.util_2d:.3f}, 1D {r.util_1d:.3f}  ("
                 + ", ".join(f"{a} {u:.3f}" for a, u in r.util.items()) + ")")
    lines.append(f"  DRAM         {_fmt_bytes(r.dram_bytes)}  (" + ", ".join(
        f"{t} {_fmt_bytes(b)}" for t, b in sorted(r.dram_by_tensor.items(), key=lambda kv: -kv[1]))
        + ")")
    b = r.buffer
    if b:
        lines.append(f"  buffer       {_fmt_bytes(b['used_bytes'])} of "
                     f"{_fmt_bytes(b['capacity_bytes'])} ({b['occupancy']:.1%})"
                     + (f", plan {b['plan']}" if b.get("plan") else ""))
    lines.append(f"  energy       {r.energy_pj:.4g} pJ  (" + ", ".join(
        f"{k} {v:.3g}" for k, v in r.energy_by_component.items()) + ")")
    return "\n".join(lines) + "\n"


def cmd_explore(args) -> int:
    from .explore import run_explore
    res = run_explore(args.config, args.output, jobs=args.jobs, plots=not args.no_plots,
                      progress=not args.quiet)
    print(f"{res['points']} points on {res['jobs']} worker(s): evaluated in "
          f"{res['eval_seconds']:.2f} s, {res['total_seconds']:.2f} s with the files"
          + (" and plots" if res["plots"] and not res["plots"].startswith("matplotlib") else ""))
    print(f"wrote {res['out']}/attention.csv" + (", end2end.csv" if res["end2end"] else "")
          + ", summary.csv" + (f"; plots: {res['plots']}" if res["plots"] else ""))
    if res["summary"]:
        print(f"{'kind':<10} {'baseline':<13} {'design':<13} {'speedup':>8} {'paper':>6}  "
              f"{'energy':>7} {'paper':>6}")
        for s in res["summary"]:
            ps = s["paper_speedup"]
            pe = s["paper_energy_ratio"]
            print(f"{s['kind']:<10} {s['baseline']:<13} {s['design']:<13} "
                  f"{s['mean_speedup']:>7.2f}x {ps if ps == '' else f'{ps:g}x':>6}  "
                  f"{s['mean_energy_ratio']:>7.3f} {pe if pe == '' else f'{pe:g}':>6}")
    return 0


def register(sub) -> None:
    """Add `simulate` and `explore` to einsumc's argparse subparsers."""
    s = sub.add_parser("simulate", help="latency, utilization, traffic and energy of a cascade "
                                        "on a spatial array")
    s.add_argument("spec", help="the .ein cascade (- for standard input)")
    s.add_argument("--arch", required=True, help="architecture YAML (examples/fusemax/arch/)")
    s.add_argument("--mapping", help="mapping YAML (default: derived from the cascade and "
                                     "the architecture)")
    s.add_argument("--shape", help="extents, e.g. M=64K,P=64K,B=64,H=12 (B and H multiply the "
                                   "work when the cascade has no such rank)")
    s.add_argument("--json", action="store_true", help="print the full result as JSON")
    s.add_argument("--transform", metavar="CHAIN",
                   help="transform the cascade first, e.g. partition:M=256,online")
    s.add_argument("--opt", action="store_true", help="apply every legal transform first")
    s.set_defaults(fn=cmd_simulate)

    e = sub.add_parser("explore", help="sweep cascades x architectures x shapes x array sizes; "
                                       "CSV and plots")
    e.add_argument("config", help="sweep config YAML (examples/fusemax/eval.yaml reproduces "
                                  "the FuseMax evaluation)")
    e.add_argument("-o", "--output", default="explore-out", help="output folder")
    e.add_argument("-j", "--jobs", type=int, default=None,
                   help="worker processes (default: all cores)")
    e.add_argument("--no-plots", action="store_true", help="write CSV only")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e.set_defaults(fn=cmd_explore)


def add_compile_options(c) -> None:
    """The options `einsumc compile` needs for `--target spatial`."""
    c.add_argument("--arch", help="architecture YAML (--target spatial)")
    c.add_argument("--mapping", help="mapping YAML (--target spatial; default: derived)")
    c.add_argument("--emit", choices=("text", "json", "timeloop"), default=None,
                   help="--target spatial: the schedule as text or JSON, or Timeloop v0.4 "
                        "problem files (one per Einsum; -o names a folder)")
    c.add_argument("--shape", help="--target spatial: extents, e.g. M=64K,P=64K "
                                   "(default 4096 for every symbolic rank)")
