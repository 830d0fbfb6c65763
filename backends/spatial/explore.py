"""`einsumc explore CONFIG`: sweep cascades x architectures x shapes x array sizes.

The config (YAML; `examples/fusemax/eval.yaml` reproduces the FuseMax evaluation):

    models:                     # workload parameters, usable as names in expressions
      BERT: {B: 64, D: 768, H: 12, E: 64, F: 64, S: 3072}
    seq_lens: [1024, 4096]
    designs:                    # (cascade, architecture, mapping) triples; paths are
      flat:    {cascade: cascade4_3pass.ein, arch: arch/flat.yaml, mapping: mappings/flat.yaml}
      binding: {cascade: cascade5_1pass.ein, arch: arch/fusemax.yaml,   # relative to the
                mapping: mappings/fusemax.yaml}                          # config file
      derived: {cascade: cascade4_3pass.ein, transform: "partition:M=256,defer-division,online",
                arch: arch/fusemax.yaml, mapping: mappings/fusemax.yaml}   # a transformed cascade
    attention:
      shapes: {M: seq_len, P: seq_len, E: E, F: F, B: B, H: H}
    end2end:                    # optional: attention + the linear layers of the block
      cascade: linear.ein       # a path, or the .ein text itself
      mapping: mappings/linear.yaml
      shapes: {T: B*seq_len, D: D, N: E*H, S: S}
    grid:                       # optional, instead of (or besides) designs: every
      cascades: {c4: cascade4_3pass.ein, c5: cascade5_1pass.ein}   # combination, named
      archs: {flat: arch/flat.yaml, fusemax: arch/fusemax.yaml}    # c5+fusemax+default;
      mappings: {}                                                  # misfits -> errors.csv
    array_sizes: [128, 256]     # optional: every design at n x n (2D) and n (1D) PEs
    compare: [[flat, binding]]  # summary: mean speedup and energy ratio, baseline first
    baseline: unfused           # the reference of the speedup/energy plots
    paper:                      # optional published numbers, printed beside ours
      - {kind: attention, baseline: flat, design: binding, speedup: 6.7, energy: 0.79}
    pareto: {design: binding, models: [BERT], seq_lens: [262144],
             array_sizes: [16, 32, 64, 128, 256, 512]}

Writes OUT/attention.csv, OUT/end2end.csv (columns: model, seq_len, design, latency_s,
util_2d, util_1d, dram_bytes, energy_pj), OUT/summary.csv (mean speedup and energy ratio
per `compare` pair, beside `paper`), OUT/pareto.csv (model, seq_len, design, array,
area_cm2, latency_s, energy_pj) and, with matplotlib, OUT/utilization.png,
OUT/attention.png and OUT/end2end.png (speedup and energy relative to `baseline`) and
OUT/pareto.png.
Points are evaluated in parallel over the machine's cores (a process pool), with a
progress bar on stderr.
"""
from __future__ import annotations

import csv
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ...diagnostics import EinsumcError, error
from .arch import Architecture, load_arch
from .cascade import CascadeModel, cascade_model
from .mapping import Mapping, load_mapping
from .model import Plan, derive_plan, evaluate
from .yamlio import Fields, check_int, eval_expr, fail, load_yaml

COLUMNS = ("model", "seq_len", "design", "latency_s", "util_2d", "util_1d", "dram_bytes",
           "energy_pj")


# ============================================================================ config
@dataclass
class Design:
    name: str
    cascade: str
    arch: str
    mapping: str | None
    arch_overrides: dict = field(default_factory=dict)
    transform: str | None = None        # a transform chain applied to the cascade first
    grid: bool = False                  # from `grid:`: a combination that does not fit is
                                        # recorded in errors.csv instead of stopping the sweep


@dataclass
class Config:
    file: str
    models: dict[str, dict[str, float]]
    seq_lens: list[int]
    designs: dict[str, Design]
    attn_shapes: dict[str, object]
    e2e: dict | None
    array_sizes: list[int]
    compare: list[tuple[str, str]]
    baseline: str | None
    paper: dict[tuple, dict]
    pareto: dict | None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    data = load_yaml(path, "explore config")
    f = Fields(data, str(path))
    base = path.parent

    def rel(p: str) -> str:
        return p if ("\n" in p or os.path.isabs(p)) else str(base / p)

    models: dict[str, dict[str, float]] = {}
    ms = f.sub("models")
    if not ms.data:
        raise fail(ms.where(), "at least one model is required")
    for mn in list(ms.data):
        m = ms.sub(mn)
        models[str(mn)] = {str(k): m.number(k) for k in list(m.data)}
        m.done()
    ms.done()
    sl = f.raw("seq_lens")
    if not isinstance(sl, list) or not sl:
        raise fail(f.where("seq_lens"), "expected a non-empty list of sequence lengths")
    seq_lens = [check_int(eval_expr(v, {}, f.where(f"seq_lens[{i}]")), f.where(f"seq_lens[{i}]"))
                for i, v in enumerate(sl)]
    designs: dict[str, Design] = {}
    ds = f.sub("designs", {})
    if f.has("grid"):
        g = f.sub("grid")
        parts = {}
        for k in ("cascades", "archs", "mappings"):
            sub = g.sub(k, {} if k == "mappings" else ...)
            parts[k] = {str(n): rel(sub.string(n)) for n in list(sub.data)}
            sub.done()
            if not parts[k] and k != "mappings":
                raise fail(sub.where(), "at least one entry (name: path) is required")
        g.done()
        for cn, cp in parts["cascades"].items():
            for an, ap in parts["archs"].items():
                for mn, mpath in (parts["mappings"] or {"default": None}).items():
                    name = f"{cn}+{an}+{mn}"
                    designs[name] = Design(name, cp, ap, mpath, grid=True)
    elif not ds.data:
        raise fail(ds.where(), "at least one design is required (or a grid)")
    for dn in list(ds.data):
        d = ds.sub(dn)
        mp = d.raw("mapping", None)
        if mp is not None and not isinstance(mp, str):
            raise fail(d.where("mapping"), "expected a path")
        ov = d.raw("arch_overrides", {})
        if not isinstance(ov, dict):
            raise fail(d.where("arch_overrides"), "expected a mapping of field: value")
        tr = d.raw("transform", None)
        if tr is not None and not isinstance(tr, str):
            raise fail(d.where("transform"), "expected a transform chain such as "
                                             "partition:M=256,defer-division,online")
        designs[str(dn)] = Design(str(dn), rel(d.string("cascade")), rel(d.string("arch")),
                                  rel(mp) if mp else None, ov, tr)
        d.done()
    ds.done()
    att = f.sub("attention")
    attn_shapes = dict(att.sub("shapes").data)
    att.done()
    e2e = None
    if f.has("end2end"):
        e = f.sub("end2end")
        mp = e.raw("mapping", None)
        e2e = {"cascade": rel(e.string("cascade")), "mapping": rel(mp) if mp else None,
               "shapes": dict(e.sub("shapes").data)}
        e.done()
    sizes = [check_int(v, f.where(f"array_sizes[{i}]")) for i, v in
             enumerate(f.raw("array_sizes", []) or [])]
    compare = []
    for i, pair in enumerate(f.raw("compare", []) or []):
        w = f.where(f"compare[{i}]")
        if not isinstance(pair, list) or len(pair) != 2 or any(p not in designs for p in pair):
            raise fail(w, f"expected [baseline, design] naming designs ({', '.join(designs)})")
        compare.append((pair[0], pair[1]))
    baseline = f.raw("baseline", None)
    if baseline is not None and baseline not in designs:
        raise fail(f.where("baseline"), f"'{baseline}' is not a design ({', '.join(designs)})")
    paper = {}
    for i, rec in enumerate(f.raw("paper", []) or []):
        r = Fields(rec, str(path), f"paper[{i}]")
        key = (r.string("kind", choices=("attention", "end2end")), r.string("baseline"),
               r.string("design"))
        paper[key] = {"speedup": r.number("speedup"), "energy": r.number("energy")}
        r.done()
    pareto = None
    if f.has("pareto"):
        p = f.sub("pareto")
        pd = p.string("design")
        if pd not in designs:
            raise fail(p.where("design"), f"'{pd}' is not a design ({', '.join(designs)})")
        pm = p.raw("models", list(models))
        for m in pm:
            if m not in models:
                raise fail(p.where("models"), f"'{m}' is not a model ({', '.join(models)})")
        pareto = {"design": pd, "models": list(pm),
                  "seq_lens": [check_int(eval_expr(v, {}, p.where("seq_lens")), p.where("seq_lens"))
                               for v in p.raw("seq_lens")],
                  "array_sizes": [check_int(v, p.where("array_sizes"))
                                  for v in p.raw("array_sizes")]}
        p.done()
    f.done()
    return Config(str(path), models, seq_lens, designs, attn_shapes, e2e, sizes, compare,
                  baseline, paper, pareto)


# ============================================================================ contexts
def size_overrides(arch: Architecture, n: int) -> dict:
    """Arch overrides that make every array n x n (2D) or n (1D) PEs."""
    out = {}
    for name, a in arch.arrays.items():
        out[f"arrays.{name}.shape"] = [n, n] if a.kind == "2d" else [n]
        if a.kind == "2d":
            out[f"arrays.{name}.fill_drain_cycles"] = n
    return out


@dataclass
class Context:
    """Everything a worker needs, built once: cascades, architectures, mappings, plans."""

    cfg: Config
    cascades: dict[str, CascadeModel] = field(default_factory=dict)
    archs: dict[tuple, Architecture] = field(default_factory=dict)
    mappings: dict[str | None, Mapping] = field(default_factory=dict)
    plans: dict[tuple, Plan] = field(default_factory=dict)

    def cascade(self, spec: str, where: str, transform: str | None = None) -> CascadeModel:
        key = f"{spec}\x00{transform or ''}"
        if key not in self.cascades:
            from ...driver import load
            try:
                prog = load(spec, "end2end.cascade") if "\n" in spec else load(Path(spec))
                if transform:
                    prog = prog.transformed(False, transform)
            except EinsumcError as exc:
                raise EinsumcError([error(f"{where}: {d.message}", d.span)
                                    for d in exc.diagnostics], exc.source) from None
            self.cascades[key] = cascade_model(prog)
        return self.cascades[key]

    def arch(self, path: str, overrides: dict, size: int | None) -> Architecture:
        key = (path, tuple(sorted((k, str(v)) for k, v in overrides.items())), size)
        if key not in self.archs:
            a = load_arch(path, overrides or None)
            if size is not None:
                a = load_arch(path, {**overrides, **size_overrides(a, size)})
            self.archs[key] = a
        return self.archs[key]

    def mapping(self, path: str | None) -> Mapping:
        if path not in self.mappings:
            self.mappings[path] = load_mapping(path)
        return self.mappings[path]

    def plan(self, cm: CascadeModel, arch: Architecture, mp: Mapping) -> Plan:
        key = (cm.name, id(cm), arch.source, id(arch), mp.source)
        if key not in self.plans:
            self.plans[key] = derive_plan(cm, arch, mp)
        return self.plans[key]


def build_context(cfg: Config, tasks: list[tuple]) -> Context:
    ctx = Context(cfg)
    for kind, dname, _m, _l, size in tasks:
        d = cfg.designs[dname]
        arch = ctx.arch(d.arch, d.arch_overrides, size)
        if kind == "linear":
            cm = ctx.cascade(cfg.e2e["cascade"], f"{cfg.file}: end2end.cascade")
            mp = ctx.mapping(cfg.e2e["mapping"])
        else:
            cm = ctx.cascade(d.cascade, f"{cfg.file}: designs.{dname}.cascade", d.transform)
            mp = ctx.mapping(d.mapping)
        try:
            ctx.plan(cm, arch, mp)
        except EinsumcError:
            if not d.grid:
                raise
    return ctx


_CTX: Context | None = None


def _shapes(spec: dict, names: dict, where: str) -> dict:
    return {k: eval_expr(v, names, f"{where}.{k}") for k, v in spec.items()}


def run_task(task: tuple, ctx: Context | None = None) -> dict:
    ctx = ctx or _CTX
    kind, dname, model, seq_len, size = task
    cfg = ctx.cfg
    d = cfg.designs[dname]
    arch = ctx.arch(d.arch, d.arch_overrides, size)
    names = {**cfg.models[model], "seq_len": seq_len}
    if kind == "linear":
        cm = ctx.cascade(cfg.e2e["cascade"], "end2end.cascade")
        mp = ctx.mapping(cfg.e2e["mapping"])
        shapes = _shapes(cfg.e2e["shapes"], names, f"{cfg.file}: end2end.shapes")
    else:
        cm = ctx.cascade(d.cascade, f"designs.{dname}.cascade", d.transform)
        mp = ctx.mapping(d.mapping)
        shapes = _shapes(cfg.attn_shapes, names, f"{cfg.file}: attention.shapes")
    try:
        r = evaluate(cm, arch, mp, shapes, ctx.plan(cm, arch, mp))
    except EinsumcError as exc:
        where = f"design {dname}, model {model}, seq_len {seq_len}" + (
            f", array {size}" if size else "")
        if d.grid:
            nan = float("nan")
            return {"task": task, "error": f"{where}: " + "; ".join(
                        x.message for x in exc.diagnostics),
                    "latency_s": nan, "util_2d": nan, "util_1d": nan, "dram_bytes": nan,
                    "energy_pj": nan, "bottleneck": "-", "busy_2d": nan, "busy_1d": nan,
                    "clock": arch.clock_hz, "area_um2": arch.area_um2(),
                    "energy_by_component": {}}
        raise EinsumcError([error(f"{where}: {x.message}") for x in exc.diagnostics]) from None
    lat_c = r.latency_s * arch.clock_hz
    busy2 = r.util_2d * lat_c
    busy1 = r.util_1d * lat_c
    return {"task": task, "latency_s": r.latency_s, "util_2d": r.util_2d, "util_1d": r.util_1d,
            "dram_bytes": r.dram_bytes, "energy_pj": r.energy_pj, "bottleneck": r.bottleneck,
            "busy_2d": busy2, "busy_1d": busy1, "clock": arch.clock_hz,
            "area_um2": arch.area_um2(), "energy_by_component": r.energy_by_component}


def _run_chunk(tasks: list[tuple]) -> list[dict]:
    return [run_task(t) for t in tasks]


def _init_worker(cfg_path: str, tasks: list[tuple]) -> None:  # non-fork start methods
    global _CTX
    _CTX = build_context(load_config(cfg_path), tasks)


# ============================================================================ driver
class Progress:
    """A plain-text progress bar on stderr."""

    def __init__(self, total: int, enabled: bool = True, width: int = 30):
        self.total, self.done, self.width = total, 0, width
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.last = -1

    def step(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = int(100 * self.done / max(1, self.total))
        if not self.tty and pct // 25 == self.last // 25 and self.done < self.total:
            return
        self.last = pct
        fill = int(self.width * self.done / max(1, self.total))
        bar = "#" * fill + "-" * (self.width - fill)
        el = time.perf_counter() - self.t0
        end = "" if self.tty and self.done < self.total else "\n"
        sys.stderr.write(f"\rexplore [{bar}] {self.done}/{self.total} points, {el:.1f} s{end}")
        sys.stderr.flush()


def make_tasks(cfg: Config) -> list[tuple]:
    sizes = cfg.array_sizes or [None]
    tasks = []
    for size in sizes:
        for m in cfg.models:
            for L in cfg.seq_lens:
                for d in cfg.designs:
                    tasks.append(("attention", d, m, L, size))
                    if cfg.e2e:
                        tasks.append(("linear", d, m, L, size))
    if cfg.pareto:
        for n in cfg.pareto["array_sizes"]:
            for m in cfg.pareto["models"]:
                for L in cfg.pareto["seq_lens"]:
                    tasks.append(("pareto", cfg.pareto["design"], m, L, n))
    return tasks


def run_explore(config: str | Path, out: str | Path, jobs: int | None = None,
                plots: bool = True, progress: bool = True) -> dict:
    global _CTX
    t0 = time.perf_counter()
    cfg = load_config(config)
    tasks = make_tasks(cfg)
    ctx = build_context(cfg, tasks)  # errors in any file surface here, before the pool
    jobs = jobs or os.cpu_count() or 1
    bar = Progress(len(tasks), progress)
    results: dict[tuple, dict] = {}
    if jobs <= 1 or len(tasks) < 8:
        for t in tasks:
            results[t] = run_task(t, ctx)
            bar.step()
    else:
        import multiprocessing
        n_chunks = min(len(tasks), jobs * 4)
        chunks = [tasks[i::n_chunks] for i in range(n_chunks)]
        _CTX = ctx
        try:
            mpctx = multiprocessing.get_context("fork")
            ex = ProcessPoolExecutor(max_workers=jobs, mp_context=mpctx)
        except ValueError:
            ex = ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker,
                                     initargs=(str(config), tasks))
        with ex:
            futs = [ex.submit(_run_chunk, c) for c in chunks]
            for fu in as_completed(futs):
                for r in fu.result():
                    results[r["task"]] = r
                bar.step(len(fu.result()))
        _CTX = None
    eval_s = time.perf_counter() - t0
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    rows_attn, rows_e2e, rows_pareto = _tables(cfg, results)
    _write_csv(outdir / "attention.csv", COLUMNS, rows_attn)
    if cfg.e2e:
        _write_csv(outdir / "end2end.csv", COLUMNS, rows_e2e)
    if rows_pareto:
        _write_csv(outdir / "pareto.csv", ("model", "seq_len", "design", "array", "area_cm2",
                                           "latency_s", "energy_pj"), rows_pareto)
    errors = sorted({r["error"] for r in results.values() if "error" in r})
    if errors:
        with open(outdir / "errors.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["error"])
            w.writerows([e] for e in errors)
        print(f"einsumc explore: {len(errors)} grid point(s) could not be evaluated: see "
              f"{outdir / 'errors.csv'}", file=sys.stderr)
    summary = _summary(cfg, rows_attn, rows_e2e)
    _write_csv(outdir / "summary.csv", ("kind", "baseline", "design", "mean_speedup",
                                        "mean_energy_ratio", "paper_speedup",
                                        "paper_energy_ratio", "points"), summary)
    plot_note = None
    if plots:
        plot_note = _plots(cfg, outdir, rows_attn, rows_e2e, rows_pareto, jobs)
    total_s = time.perf_counter() - t0
    return {"points": len(tasks), "jobs": jobs, "eval_seconds": eval_s, "errors": errors,
            "total_seconds": total_s, "summary": summary, "out": str(outdir),
            "plots": plot_note, "attention": rows_attn, "end2end": rows_e2e}


def _tables(cfg: Config, results: dict) -> tuple[list, list, list]:
    attn, e2e, pareto = [], [], []
    sizes = cfg.array_sizes or [None]
    for size in sizes:
        for m in cfg.models:
            for L in cfg.seq_lens:
                for d in cfg.designs:
                    name = d if size is None else f"{d}@{size}x{size}"
                    a = results[("attention", d, m, L, size)]
                    attn.append({"model": m, "seq_len": L, "design": name,
                                 "latency_s": a["latency_s"], "util_2d": a["util_2d"],
                                 "util_1d": a["util_1d"], "dram_bytes": a["dram_bytes"],
                                 "energy_pj": a["energy_pj"]})
                    if cfg.e2e:
                        li = results[("linear", d, m, L, size)]
                        lat = a["latency_s"] + li["latency_s"]
                        lc = lat * a["clock"]
                        e2e.append({"model": m, "seq_len": L, "design": name, "latency_s": lat,
                                    "util_2d": (a["busy_2d"] + li["busy_2d"]) / lc,
                                    "util_1d": (a["busy_1d"] + li["busy_1d"]) / lc,
                                    "dram_bytes": a["dram_bytes"] + li["dram_bytes"],
                                    "energy_pj": a["energy_pj"] + li["energy_pj"]})
    if cfg.pareto:
        for n in cfg.pareto["array_sizes"]:
            for m in cfg.pareto["models"]:
                for L in cfg.pareto["seq_lens"]:
                    r = results[("pareto", cfg.pareto["design"], m, L, n)]
                    pareto.append({"model": m, "seq_len": L, "design": cfg.pareto["design"],
                                   "array": f"{n}x{n}", "area_cm2": r["area_um2"] * 1e-8,
                                   "latency_s": r["latency_s"], "energy_pj": r["energy_pj"]})
    return attn, e2e, pareto


def _summary(cfg: Config, attn: list, e2e: list) -> list[dict]:
    out = []
    for kind, rows in (("attention", attn), ("end2end", e2e)):
        if not rows:
            continue
        idx = {(r["model"], r["seq_len"], r["design"]): r for r in rows}
        for base, des in cfg.compare:
            sp, en = [], []
            for m in cfg.models:
                for L in cfg.seq_lens:
                    b, d = idx.get((m, L, base)), idx.get((m, L, des))
                    if b and d:
                        sp.append(b["latency_s"] / d["latency_s"])
                        en.append(d["energy_pj"] / b["energy_pj"])
            ref = cfg.paper.get((kind, base, des), {})
            out.append({"kind": kind, "baseline": base, "design": des,
                        "mean_speedup": statistics.mean(sp) if sp else math.nan,
                        "mean_energy_ratio": statistics.mean(en) if en else math.nan,
                        "paper_speedup": ref.get("speedup", ""),
                        "paper_energy_ratio": ref.get("energy", ""), "points": len(sp)})
    return out


def _write_csv(path: Path, cols, rows) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(cols), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.9g}" if isinstance(v, float) else v) for k, v in r.items()})


def _label(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 and n % (1 << 20) == 0 else (
        f"{n >> 10}K" if n >= 1024 and n % 1024 == 0 else str(n))


def _plots(cfg: Config, outdir: Path, attn: list, e2e: list, pareto: list,
           jobs: int = 1) -> str:
    """Figures (matplotlib, Agg): utilization.png, attention.png (speedup and energy
    relative to the baseline), end2end.png, pareto.png; drawn in parallel when jobs > 1."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        msg = "matplotlib is not installed: plots skipped (pip install matplotlib)"
        print(f"einsumc explore: {msg}", file=sys.stderr)
        return msg
    figs = [("utilization.png", attn, ("util_2d", "util_1d"), "attention: array utilization")]
    if cfg.baseline:
        figs.append(("attention.png", attn, ("speedup", "energy"), "attention"))
        if e2e:
            figs.append(("end2end.png", e2e, ("speedup", "energy"), "end to end"))
    jobs_list = [(cfg, outdir, f) for f in figs]
    if pareto:
        jobs_list.append((cfg, outdir, ("pareto.png", pareto, (), "")))
    if jobs > 1 and len(jobs_list) > 1:
        import multiprocessing

        import matplotlib.pyplot as plt
        warm = plt.figure(figsize=(1, 1))   # load fonts once, before the workers fork
        warm.text(0.5, 0.5, "1K")
        warm.canvas.draw()
        plt.close(warm)
        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:
            ctx = None
        if ctx is not None:
            with ctx.Pool(min(jobs, len(jobs_list))) as pool:
                return ", ".join(pool.map(_figure, jobs_list))
    return ", ".join(_figure(j) for j in jobs_list)


def _figure(job) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cfg, outdir, (fname, rows, metrics, title) = job
    if fname == "pareto.png":
        fig, ax = plt.subplots(figsize=(5, 4))
        for m in cfg.pareto["models"]:
            pts = sorted((r["area_cm2"], r["latency_s"]) for r in rows if r["model"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("area (cm$^2$)")
        ax.set_ylabel("attention latency (s)")
        ax.legend()
        ax.set_title(f"{cfg.pareto['design']}: area vs latency")
        fig.subplots_adjust(left=0.16, bottom=0.13, right=0.97, top=0.92)
        fig.savefig(outdir / fname, dpi=100)
        plt.close(fig)
        return fname
    base = cfg.baseline
    designs = list(dict.fromkeys(r["design"] for r in rows))
    models = list(cfg.models)
    idx = {(r["model"], r["seq_len"], r["design"]): r for r in rows}
    labels = {"util_2d": "2D utilization", "util_1d": "1D utilization",
              "speedup": f"speedup over {base}", "energy": f"energy / {base}"}

    def value(metric, m, L, d):
        r = idx[(m, L, d)]
        if metric == "speedup":
            return idx[(m, L, base)]["latency_s"] / r["latency_s"]
        if metric == "energy":
            return r["energy_pj"] / idx[(m, L, base)]["energy_pj"]
        return r[metric]

    fig, axes = plt.subplots(len(metrics), len(models), figsize=(3.6 * len(models),
                                                                 2.6 * len(metrics)),
                             sharey="row", squeeze=False)
    width = 0.8 / max(1, len(designs))
    xs0 = range(len(cfg.seq_lens))
    for row, metric in enumerate(metrics):
        for ax, m in zip(axes[row], models):
            for k, d in enumerate(designs):
                ax.bar([i + k * width for i in xs0],
                       [value(metric, m, L, d) for L in cfg.seq_lens], width, label=d)
            ax.set_xticks([i + 0.4 - width / 2 for i in xs0])
            ax.set_xticklabels([_label(L) for L in cfg.seq_lens], fontsize=7)
            if row == 0:
                ax.set_title(m, fontsize=9)
        axes[row][0].set_ylabel(labels[metric], fontsize=8)
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.suptitle(title + " (x: tokens)", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.08, top=0.88, wspace=0.08, hspace=0.3)
    fig.savefig(outdir / fname, dpi=90)
    plt.close(fig)
    return fname
