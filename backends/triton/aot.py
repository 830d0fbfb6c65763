"""Ahead-of-time compilation without a GPU: `einsumc compile SPEC --target triton --aot sm_90`.

For each kernel, config and architecture the generated kernel is compiled by Triton to a
cubin (source -> ttir -> ttgir -> llir -> ptx -> cubin) for `GPUTarget("cuda", cc, 32)`,
and the report gives:

    regs     registers per thread (ptxas -v on the PTX; the metadata lacks them)
    spills   spill stores + loads in bytes (ptxas -v); 0 is the goal
    smem     shared memory from the compiled metadata, checked against the GPU's limit
             (A100 / sm_80: 166912 B, H100 / sm_90: 232448 B)
    MMA      tensor-core dots among the kernel's dots, from the TTGIR
             (`ttng.warp_group_dot`: wgmma on sm_90; `tt.dot` with an MMA encoding:
             mma.sync on sm_80), and the MMA instruction seen in the PTX
    time     compile time in seconds

Inputs are assumed contiguous (the innermost stride specialized to 1, as Triton's JIT
does on a launch), pointers 16-byte aligned. Extents that set block sizes and are not
declared in the spec (a symbolic head dim) take `shapes` or 64.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ...diagnostics import EinsumcError, error
from ...ir.program import Program
from .lower import DEFAULT, GPU_CONFIGS, Config

#: shared memory per block (opt-in maximum) of the reference GPUs
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
GPU_NAME = {80: "A100", 86: "A10/RTX 30", 89: "L4/RTX 40", 90: "H100"}
_TT = {"f16": "fp16", "bf16": "bf16", "f32": "fp32"}


@dataclass
class AotResult:
    kernel: str
    arch: int
    config: Config
    dtype: str
    regs: int | None
    spill_stores: int | None
    spill_loads: int | None
    smem: int
    smem_limit: int | None
    mma_dots: int
    dots: int
    mma_insn: str
    seconds: float
    rows: int = 0

    @property
    def spills(self) -> int:
        return (self.spill_stores or 0) + (self.spill_loads or 0)

    @property
    def smem_ok(self) -> bool:
        return self.smem_limit is None or self.smem <= self.smem_limit



def compile_cold(fn, sig, consts, attrs, arch, config):
    """`triton.compile` of one kernel for sm_`arch` with the config's warps and stages, in
    a fresh private cache (honest compile times, nothing left behind)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    with cold_cache():
        return triton.compile(ASTSource(fn, sig, consts, attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=config.num_warps,
                                           num_stages=config.num_stages))


@contextlib.contextmanager
def cold_cache():
    """A fresh, private TRITON_CACHE_DIR for one compile (honest compile times, nothing
    left behind), restored afterwards."""
    old = os.environ.get("TRITON_CACHE_DIR")
    tmp = tempfile.mkdtemp(prefix="einsumc-aot-")
    os.environ["TRITON_CACHE_DIR"] = tmp
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRITON_CACHE_DIR", None)
        else:
            os.environ["TRITON_CACHE_DIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)

def parse_archs(text: str | list) -> list[int]:
    items = text if isinstance(text, list) else str(text).split(",")
    out = []
    for a in items:
        a = str(a).strip().lower()
        if not a:
            continue
        m = re.fullmatch(r"(?:sm_?)?(\d{2,3})a?", a)
        if not m:
            raise EinsumcError([error(f"--aot: '{a}' is not an architecture like sm_90 or sm_80")])
        cc = int(m.group(1))
        if cc < 80:
            raise EinsumcError([error(f"--aot: sm_{cc} is not supported (sm_80 or newer: "
                                      "tensor-core dots of f16/bf16 need Ampere)")])
        out.append(cc)
    if not out:
        raise EinsumcError([error("--aot: name at least one architecture, e.g. sm_90")])
    return out


def compile_kernel(program: Program, arch: int, config: Config = DEFAULT, dtype: str = "f16",
                   shapes: dict | None = None, source: str | None = None,
                   kernel: str = "main"):
    """Compile one of the program's kernels for `arch`; returns (AotResult, compiled kernel).
    `kernel`: "main" (einsumc_kernel), or the split-K pair "split" (einsumc_kernel_split,
    16-row or decode-sized row blocks as launched) and "merge" (einsumc_merge)."""
    from triton.runtime.jit import JITFunction

    from . import loader
    from .target import generate

    if dtype not in _TT:
        raise EinsumcError([error(f"--aot: dtype {dtype} is not one of f16, bf16, f32")])
    text, low = (source, None) if source else generate(program, config)
    if low is None:
        _, low = generate(program, config)
    kernels = getattr(low, "kernels", {"main": None})
    if kernel not in kernels:
        raise EinsumcError([error(f"--aot: the program has no {kernel} kernel (split-K: "
                                  f"{getattr(low, 'split_why', None) or 'not generated'})")],
                           program.source)
    ks = kernels[kernel]
    kname = ks.name if ks is not None else "einsumc_kernel"
    mod = loader.load(text, interpret=False)
    fn = getattr(mod, kname)
    if not isinstance(fn, JITFunction):  # pragma: no cover - an interpreted copy
        fn = JITFunction(fn.fn)
    shapes = dict(shapes or {})
    consts, sig, attrs = {}, {}, {}
    names = fn.arg_names
    kargs = ks.args if ks is not None else low.kernel_args
    kinds = dict(zip(kargs, ks.argkinds if ks is not None else low.kernel_argkinds))
    prog = low.prog
    for n in kargs:
        kind, what = kinds[n]
        if kind == "scratch":
            sig[n] = "*fp32"
        elif kind == "nsplit":
            sig[n] = "i32"
        elif kind == "ptr":
            sig[n] = "*" + _TT[dtype]
        elif kind == "stride":
            t, j = what
            decl = next(d for d in prog.inputs + prog.outputs if d.name == t)
            if j == len(decl.indices) - 1:
                consts[n] = 1
                sig[n] = "constexpr"
            else:
                sig[n] = "i32"
        elif kind == "extent":
            sig[n] = "i32"
        elif kind == "param":
            sig[n] = "i32" if what in _int_params(low) else "fp32"
    # block sizes
    def extent(rank, default=64):
        v = low._const_rank(rank)
        return v if v is not None else int(shapes.get(rank, default))
    npow2 = lambda n: 1 if n <= 1 else 1 << (int(n) - 1).bit_length()  # noqa: E731
    for v, g in low.group.items():
        if g in ("C", "E", "F"):
            consts[low.block(v)] = low.sub[0] if (g == "C" and low.sub) else \
                max(16, npow2(extent(low.var_rank[v])))
    ext_rows = {low.var_rank[v]: extent(low.var_rank[v], 4) for v in low.row_vars}
    if low.row_const is not None:
        blk = mod._row_blocks(0, ext_rows)
        pc = npow2(low.row_const)
        prod = pc
        for v in low.secondary:
            prod *= blk[v]
            consts[low.block(v)] = blk[v]
        consts["BLOCK_R"] = max(16, npow2(prod))
    else:
        # the split kernels run 16-row programs (few rows: the split path's condition)
        rows = 16 if kernel != "main" else config.block_r
        blk = mod._row_blocks(rows, ext_rows)
        consts["BLOCK_R"] = rows
        for v in low.row_vars:
            consts[low.block(v)] = blk[v]
    consts["PREC"] = "tf32" if config.tf32 else "ieee"
    consts["UPCAST"] = False
    for c in (ks.consts if ks is not None else low.kernel_consts):
        sig[c] = "constexpr"
    for i, n in enumerate(names):
        if sig[n].startswith("*") or (kinds.get(n, ("",))[0] == "stride" and sig[n] == "i32"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    t0 = time.perf_counter()
    try:
        k = compile_cold(fn, sig, consts, attrs, arch, config)
    except Exception as exc:
        raise EinsumcError([error(f"--aot: Triton failed to compile the kernel for sm_{arch} "
                                  f"({config.key()}, {dtype}): {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}")],
                           program.source) from None
    secs = time.perf_counter() - t0
    regs, st, ld = _ptxas_usage(k.asm["ptx"], arch)
    ttgir = k.asm.get("ttgir", "")
    wg = len(re.findall(r"ttng\.warp_group_dot ", ttgir))
    dots_mma = wg + len(re.findall(r"tt\.dot [^\n]*#mma", ttgir))
    dots = wg + len(re.findall(r"= tt\.dot ", ttgir))
    ptx = k.asm["ptx"]
    insn = "wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx else "none"
    res = AotResult(kname, arch, config, dtype, regs, st, ld, int(k.metadata.shared),
                    SMEM_LIMIT.get(arch), dots_mma, dots, insn, secs, int(consts["BLOCK_R"]))
    return res, k


def _int_params(low) -> set:
    from .emit import _index_params
    return set(low.int_params) | _index_params(low.prog)


def _ptxas_usage(ptx: str, arch: int):
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(arch).path
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "k.ptx"
        f.write_text(ptx)
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        p = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", str(f), "-o", str(Path(d) / "k.o")],
                           capture_output=True, text=True)
    out = p.stdout + p.stderr
    regs = re.search(r"Used (\d+) registers", out)
    sp = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return (int(regs.group(1)) if regs else None,
            int(sp.group(1)) if sp else None, int(sp.group(2)) if sp else None)


def aot_results(program: Program, archs, dtype: str = "f16", configs=None,
                shapes: dict | None = None) -> list[AotResult]:
    """Every config of the main kernel; with split-K, the split kernel for every (warps,
    stages) of the configs (its rows are fixed) and the merge kernel (4 warps, 1 stage)."""
    from .target import generate
    archs = parse_archs(archs)
    configs = list(configs or GPU_CONFIGS)
    split = "split" in getattr(generate(program, DEFAULT)[1], "kernels", {})
    out = []
    for arch in archs:
        for cfg in configs:
            out.append(compile_kernel(program, arch, cfg, dtype, shapes)[0])
        if split:
            seen = set()
            for cfg in configs:
                if (cfg.num_warps, cfg.num_stages) not in seen:
                    seen.add((cfg.num_warps, cfg.num_stages))
                    out.append(compile_kernel(program, arch, cfg, dtype, shapes,
                                              kernel="split")[0])
            out.append(compile_kernel(program, arch, Config(16, 4, 1), dtype, shapes,
                                      kernel="merge")[0])
    return out


def aot_report(program: Program, archs, dtype: str = "f16", configs=None,
               shapes: dict | None = None) -> str:
    """The AOT table: per kernel, config and architecture (see the module docstring)."""
    from .multipass import MultiLowering, aot_multipass
    from .target import generate
    name = program.source.name if program.source else "<spec>"
    if isinstance(generate(program, DEFAULT)[1], MultiLowering):  # one kernel per group
        lines = [f"# einsumc AOT report: {name}, dtype {dtype}, multi-kernel path (compiled "
                 "without a GPU; no timings)",
                 f"{'kernel':<20} {'arch':<6} {'regs':>5} {'spills':>7} {'smem (B)':>9} "
                 f"{'dots':>5}"]
        n = bad = 0
        for arch in parse_archs(archs):
            for r in aot_multipass(program, arch, dtype, DEFAULT, shapes):
                n += 1
                bad += bool(r["spills"])
                lines.append(f"{r['kernel']:<20} sm_{arch:<3} {str(r['regs']):>5} "
                             f"{str(r['spills']):>7} {r['smem']:>9} {r['dots']:>5}")
        lines.append(f"# {n} compiles; " + ("all without spills" if not bad else
                                             f"{bad} with spills"))
        return "\n".join(lines) + "\n"
    res = aot_results(program, archs, dtype, configs, shapes)
    lines = [f"# einsumc AOT report: {name}, dtype {dtype} (compiled without a GPU; no timings)",
             f"{'kernel':<20} {'arch':<6} {'config':<22} {'regs':>5} {'spills':>7} "
             f"{'smem (B)':>9} {'limit':>7} {'MMA dots':>9} {'insn':<9} {'time':>6}"]
    for r in res:
        cfg = f"rows={r.rows} w{r.config.num_warps} s{r.config.num_stages}"
        smem = f"{r.smem}" + ("" if r.smem_ok else " OVER")
        lines.append(f"{r.kernel:<20} sm_{r.arch:<3} {cfg:<22} {str(r.regs):>5} "
                     f"{r.spills:>7} {smem:>9} {str(r.smem_limit):>7} "
                     f"{f'{r.mma_dots}/{r.dots}':>9} {r.mma_insn:<9} {r.seconds:>5.2f}s")
    bad = [r for r in res if r.spills or not r.smem_ok]
    lines.append(f"# {len(res)} compiles; " + ("all without spills and within shared memory"
                                               if not bad else f"{len(bad)} with spills or "
                                               "over the shared-memory limit"))
    return "\n".join(lines) + "\n"
