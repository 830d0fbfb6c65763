"""The `einsumc` command line: check, run, compile, graph, bench.

Every problem in a spec or its inputs is printed as `file:line:col: error: message` with
the source line and a caret, and the command exits 1; an unexpected internal error says so
in one line (rerun with `--debug` for the traceback).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from .diagnostics import EinsumcError


_SUFFIX = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}


def _parse_assignments(text: str | None, what: str, cast=int) -> dict:
    """`M=65536,P=16K` -> {"M": 65536, "P": 16384}: integers take K/M/G suffixes
    (2**10/20/30); `cast=float` parses params."""
    out = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise EinsumcError([_plain_error(f"--{what}: expected NAME=VALUE, got '{item}'")])
        mult = 1
        if cast is int and value[-1].upper() in _SUFFIX and value[:-1].isdigit():
            mult, value = _SUFFIX[value[-1].upper()], value[:-1]
        try:
            out[name] = cast(value) * mult
        except ValueError:
            hint = " (an integer; suffixes K, M, G allowed: P=64K)" if cast is int else ""
            raise EinsumcError([_plain_error(
                f"--{what}: '{value}' is not a valid value for {name}{hint}")]) from None
    return out


def _plain_error(msg: str):
    from .diagnostics import error
    return error(msg)


def _load(spec: str):
    """Load a spec named on the command line: a path, or `-` for standard input."""
    from .driver import load
    if spec == "-":
        return load(sys.stdin.read(), "<stdin>")
    return load(Path(spec))


def _write(text: str, path: str | None) -> None:
    """Write `text` to `path` (saying so on stderr), or to stdout."""
    if path:
        Path(path).write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _print_warnings(prog) -> None:
    for w in prog.warnings:
        print(w.render(prog.source), file=sys.stderr)


def cmd_check(args) -> int:
    prog = _load(args.spec)
    _print_warnings(prog)
    n = len(prog.einsums)
    print(f"{prog.source.name}: ok ({n} Einsum{'s' if n != 1 else ''}, "
          f"{len(prog.warnings)} warning{'s' if len(prog.warnings) != 1 else ''})")
    return 0


def _load_inputs(prog, args):
    from .inputs import load_npz, random_inputs
    shapes = _parse_assignments(args.shape, "shape")
    params = _parse_assignments(getattr(args, "param", None), "param", float)
    if args.inputs:
        inputs = load_npz(prog, args.inputs)
    else:
        inputs = random_inputs(prog, shapes, seed=args.seed)
    missing = [p for p in prog.runtime_params if p not in params]
    if missing:
        raise EinsumcError([_plain_error(
            f"the cascade takes run-time param(s) {', '.join(missing)}: pass --param "
            + ",".join(f"{m}=VALUE" for m in missing))], prog.source)
    return inputs, params


def _checksum(arr) -> str:
    import numpy as np
    a = np.ascontiguousarray(arr)
    return hashlib.sha256(a.tobytes()).hexdigest()[:12]


def cmd_run(args) -> int:
    import numpy as np

    prog = _load(args.spec)
    _print_warnings(prog)
    inputs, params = _load_inputs(prog, args)
    fn = prog.compile(target=args.target, opt=args.opt, transform=args.transform)
    t0 = time.perf_counter()
    outs = fn(**inputs, **params)
    dt = time.perf_counter() - t0
    for name, arr in outs.items():
        a64 = np.asarray(arr, dtype=np.float64)
        print(f"{name}: shape {tuple(arr.shape)} {arr.dtype} sum {a64.sum():.6e} "
              f"max|x| {np.abs(a64).max() if a64.size else 0:.6e} sha256 {_checksum(arr)}")
    print(f"time ({args.target}): {dt * 1e3:.2f} ms")
    if args.compare:
        other = prog.compile(target=args.compare)  # as written: no transforms
        t0 = time.perf_counter()
        outs2 = other(**inputs, **params)
        dt2 = time.perf_counter() - t0
        print(f"time ({args.compare}): {dt2 * 1e3:.2f} ms")
        for name, arr in outs.items():
            a = np.asarray(arr, dtype=np.float64)
            b = np.asarray(outs2[name], dtype=np.float64)
            abs_err = float(np.abs(a - b).max()) if a.size else 0.0
            rel_err = abs_err / max(float(np.abs(a).max()) if a.size else 0.0, 1e-30)
            label = args.target + (" (transformed)" if args.opt or args.transform else "")
            print(f"{name}: {label} vs {args.compare}: max abs err {abs_err:.3e}, "
                  f"max rel err {rel_err:.3e}")
    if args.save:
        np.savez(args.save, **{k: np.asarray(v, dtype=np.float32) if v.dtype.kind == "V"
                               or str(v.dtype) == "bfloat16" else v for k, v in outs.items()})
        print(f"saved {', '.join(outs)} to {args.save}")
    return 0


def cmd_compile(args) -> int:
    if args.target == "spatial":
        from .backends.spatial.cli import compile_spatial
        return compile_spatial(args)
    if getattr(args, "arch", None) or getattr(args, "mapping", None):
        raise EinsumcError([_plain_error("--arch and --mapping need --target spatial")])
    prog = _load(args.spec)
    if args.aot:
        if args.target != "triton":
            raise EinsumcError([_plain_error("--aot needs --target triton")])
        from .backends.triton.aot import aot_report
        _print_warnings(prog)
        sys.stdout.write(aot_report(prog.transformed(args.opt, args.transform), args.aot,
                                    dtype=args.dtype or "f16"))
        return 0
    _print_warnings(prog)
    text = prog.emit(target=args.target, opt=args.opt, transform=args.transform)
    _write(text, args.output)
    return 0


def cmd_graph(args) -> int:
    prog = _load(args.spec)
    _print_warnings(prog)
    g = prog.graph()
    sys.stdout.write(g.to_json() + "\n" if args.format == "json" else g.to_dot())
    return 0


def cmd_print(args) -> int:
    prog = _load(args.spec)
    sys.stdout.write(prog.to_source())
    return 0


def cmd_transform(args) -> int:
    from .transforms import apply, optimize
    prog = _load(args.spec)
    _print_warnings(prog)
    if not args.opt and not args.transform:
        raise EinsumcError([_plain_error("transform: give --opt or --transform NAME[,NAME...]")])
    notes = []
    if args.transform:
        prog = apply(prog, args.transform)
    if args.opt:
        prog, notes = optimize(prog)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    how = " ".join(x for x in ("--opt" if args.opt else "",
                               f"--transform {args.transform}" if args.transform else "") if x)
    header = f"# transformed by einsumc ({how})\n"
    passes = prog.analyze().passes
    header += "# passes: " + ", ".join(f"{r} = {k}" for r, k in passes.items()) + "\n"
    text = header + prog.to_source()
    _write(text, args.output)
    return 0


def cmd_analyze(args) -> int:
    from .analysis import analyze
    prog = _load(args.spec)
    _print_warnings(prog)
    shapes = _parse_assignments(args.shape, "shape")
    shapes.update(_parse_assignments(args.param, "param", float))
    result = analyze(prog, rank=args.rank, shapes=shapes, capacity=args.capacity)
    sys.stdout.write(result.to_json() + "\n" if args.json else result.report())
    return 0


def cmd_bench(args) -> int:
    if args.target == "triton":
        from .backends.triton.bench import bench_triton
        return bench_triton(args)
    from .bench import run_bench
    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="einsumc", description="A compiler for attention written as "
                                "cascades of extended Einsums (.ein files).")
    p.add_argument("--version", action="version", version=f"einsumc {__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("check", help="parse and check a spec; print diagnostics")
    c.add_argument("spec")
    c.set_defaults(fn=cmd_check)

    def transform_opts(c):
        c.add_argument("--opt", action="store_true", help="apply every legal transform first")
        c.add_argument("--transform", metavar="CHAIN",
                       help="transforms to apply first, e.g. partition:M=64,defer-division,online")

    def run_opts(c):
        c.add_argument("spec")
        transform_opts(c)
        c.add_argument("--shape", help="extents, e.g. M=1024,P=1024")
        c.add_argument("--param", help="run-time params, e.g. s0=1.5")
        c.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
        c.add_argument("--inputs", help="read inputs from an .npz file instead")
        c.add_argument("--target", default="numpy")

    r = sub.add_parser("run", help="run a spec on random (or given) inputs")
    run_opts(r)
    r.add_argument("--compare", metavar="TARGET", help="also run TARGET and print the errors")
    r.add_argument("--save", metavar="OUT.npz", help="save the outputs")
    r.set_defaults(fn=cmd_run)

    c = sub.add_parser("compile", help="emit a standalone module for a target")
    c.add_argument("spec")
    transform_opts(c)
    c.add_argument("--target", default="numpy")
    c.add_argument("-o", "--output")
    from .backends.spatial.cli import add_compile_options, register as register_spatial
    add_compile_options(c)  # --arch, --mapping, --emit, --shape (the spatial target)
    c.add_argument("--aot", metavar="ARCHS",
                   help="triton: compile ahead of time for e.g. sm_90,sm_80 and report "
                        "registers, spills, shared memory and MMA use")
    c.add_argument("--dtype", choices=("f16", "bf16", "f32"),
                   help="triton --aot: the input dtype to compile for (default f16)")
    c.set_defaults(fn=cmd_compile)

    g = sub.add_parser("graph", help="print the dataflow graph")
    g.add_argument("spec")
    g.add_argument("--format", choices=("dot", "json"), default="dot")
    g.set_defaults(fn=cmd_graph)

    t = sub.add_parser("transform", help="print the cascade after transforms, as .ein")
    t.add_argument("spec")
    transform_opts(t)
    t.add_argument("-o", "--output")
    t.set_defaults(fn=cmd_transform)

    a = sub.add_parser("analyze", help="pass counts, buffer bounds, DRAM traffic, op counts")
    a.add_argument("spec")
    a.add_argument("--rank", help="the rank to analyse (default: every reduced or iterated rank)")
    a.add_argument("--shape", help="extents for numbers, e.g. M=65536,P=65536")
    a.add_argument("--param", help="values of run-time params, e.g. W=256")
    a.add_argument("--capacity", type=int, help="on-chip buffer bytes for the best schedule")
    a.add_argument("--json", action="store_true", help="print stable JSON (schema 1) only")
    a.set_defaults(fn=cmd_analyze)

    pr = sub.add_parser("print", help="print the checked spec back as canonical .ein")
    pr.add_argument("spec")
    pr.set_defaults(fn=cmd_print)

    register_spatial(sub)  # simulate, explore

    b = sub.add_parser("bench", help="time a target against torch SDPA and naive NumPy")
    run_opts(b)
    b.add_argument("--causal", action="store_true", help="baselines use a causal mask")
    b.add_argument("--scale", type=float, default=None,
                   help="baselines' softmax scale (default 1/sqrt(head dim))")
    b.add_argument("--repeat", type=int, default=1, help="timed runs per measurement (best of)")
    b.add_argument("--baselines", default="sdpa,naive", help="comma list of: sdpa, naive")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except EinsumcError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an internal error: one line unless --debug
        if args.debug:
            raise
        print(f"einsumc: internal error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
