"""The text of a standalone Triton module (imports triton, torch, math only) for a cascade.

Layout: a header quoting the cascade (as printed by the canonical printer, never the user's
comment text), the jit helpers (`_ein_*`, built from core `tl` builtins only, so the
interpreter runs them), the kernel, and `launch(args, ...)`, the host side: it binds the
extents from the input shapes, checks the declared relations, evaluates the params, makes
the outputs, picks the block sizes and launches. Spec names reach the code only mangled
(see names.py) or as string literals.
"""
from __future__ import annotations

import math
import os

from ...diagnostics import EinsumcError, error
from ...ir import nodes as N
from ...ir.printer import print_program
from .lower import BACKEND_VERSION, DEFAULT, GPU_CONFIGS, KernelSource, Lowering

HELPERS = '''
# Reduction combiners: the standard library's own (what tl.max / tl.sum use), which the
# interpreter also recognizes and runs as one NumPy reduction; own copies otherwise.
_ein_max = getattr(tl.standard, "_elementwise_max", None)
_ein_min = getattr(tl.standard, "_elementwise_min", None)
_ein_sum = getattr(tl.standard, "_sum_combine", None)


@triton.jit
def _ein_max_own(a, b):
    return tl.maximum(a, b)


@triton.jit
def _ein_min_own(a, b):
    return tl.minimum(a, b)


@triton.jit
def _ein_sum_own(a, b):
    return a + b


_ein_max = _ein_max or _ein_max_own
_ein_min = _ein_min or _ein_min_own
_ein_sum = _ein_sum or _ein_sum_own


@triton.jit
def _ein_prod(a, b):
    return a * b


@triton.jit
def _ein_sub(a, b):
    # (-inf) - (-inf) is -inf (absent-point rule 5), so that exp of it is 0
    return tl.where((a == float("-inf")) & (b == float("-inf")), a, a - b)


@triton.jit
def _ein_div(a, b):
    # x / 0 is 0 (absent-point rule 4)
    return tl.where(b == 0, 0.0, a / b)


@triton.jit
def _ein_tanh(x):
    # tanh from core ops (libdevice calls do not run in the interpreter)
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _ein_sigmoid(x):
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _ein_fdiv(a, b):
    # floor division for b > 0 (Triton's // truncates toward zero)
    q = a // b
    return tl.where(q * b > a, q - 1, q)


@triton.jit
def _ein_fmod(a, b):
    return a - _ein_fdiv(a, b) * b


@triton.jit
def _ein_dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # f16/bf16: tensor-core MMA on 16-bit operands, f32 accumulation; f32: PREC ("ieee"
    # exact by default, "tf32" opt-in). UPCAST: the interpreter multiplies bf16 wrongly,
    # so interpreted runs compute such dots in f32.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif a.dtype == tl.float32 and b.dtype == tl.float32:
        return tl.dot(a, b, input_precision=PREC)
    elif a.dtype == tl.float32:
        return tl.dot(a.to(b.dtype), b)
    elif b.dtype == tl.float32:
        return tl.dot(a, b.to(a.dtype))
    else:
        return tl.dot(a, b)
'''

RUNTIME = '''

class EinsumcLaunchError(ValueError):
    """A problem with the arguments of a launch (shapes, dtypes, params)."""


def _npow2(n):
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _bind(ext, src, rank, n, what):
    if rank in ext and ext[rank] != n:
        raise EinsumcLaunchError(f"rank {rank} is {ext[rank]} from {src[rank]} but {n} from {what}")
    ext.setdefault(rank, n)
    src.setdefault(rank, what)


def _exact(a, b, text):
    if b == 0 or a % b:
        raise EinsumcLaunchError(f"{text} is not an integer ({a} / {b}); use ceil(a / b) to "
                                 "allow a partial last tile")
    return a // b


def _as_tensor(args, name, ndim):
    if name not in args:
        raise EinsumcLaunchError(f"missing input '{name}'")
    x = args[name]
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:
            raise EinsumcLaunchError(f"input '{name}' is not a tensor: {exc}") from None
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        if x.dtype == torch.float64 or not x.dtype.is_floating_point:
            x = x.to(torch.float32)
        else:
            raise EinsumcLaunchError(f"input '{name}' has dtype {x.dtype}; f16, bf16 or f32 "
                                     "are supported")
    if x.dim() != ndim:
        raise EinsumcLaunchError(f"input '{name}' has {ndim} axes but the tensor has {x.dim()} "
                                 f"(shape {tuple(x.shape)})")
    return x


def _param(args, name, integer):
    if name not in args:
        raise EinsumcLaunchError(f"missing param '{name}' (pass it as a keyword argument)")
    try:
        v = float(args[name])
    except (TypeError, ValueError):
        raise EinsumcLaunchError(f"param '{name}' must be a number, got {args[name]!r}") from None
    if integer:
        if not math.isfinite(v) or v != int(v):
            raise EinsumcLaunchError(f"param '{name}' = {v} is used in a filter or an index, so "
                                     "it must hold an integer value")
        return int(v)
    return v


#: what the last launch ran (kernel, NSPLIT, grid): for tests and debugging
LAST_LAUNCH = {}
#: split-K: key-loop steps per split at least; programs wanted per SM
SPLIT_MIN_STEPS = 4
SPLIT_PROGRAMS_PER_SM = 2
#: the interpreter has no SMs: it plans for a notional small GPU, so that small shapes
#: exercise the split path
INTERPRET_SMS = 8


def _n_split(split, programs, steps, dev):
    """Key-range splits (NSPLIT) for a launch of `programs` programs whose loop runs at most
    `steps` steps: 1 (no split) when the programs fill the GPU; `split` > 0 forces it."""
    if steps <= 1 or programs <= 0:
        return 1
    if split:
        return max(1, min(int(split), steps, 4096))
    if dev.type == "cuda":
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
    else:
        sms = INTERPRET_SMS
    target = SPLIT_PROGRAMS_PER_SM * sms
    if programs >= target:
        return 1
    return max(1, min(-(-target // programs), steps // SPLIT_MIN_STEPS, 4096))
'''


def emit_module(low: Lowering, ks: KernelSource, original=None) -> str:
    prog = low.prog
    orig = original or low.original
    # the file's name, not its path: the module is the same wherever the spec lives
    name = os.path.basename(orig.source.name) if orig.source else "<spec>"
    kname = "einsumc_kernel"
    lines = []
    spec = print_program(orig).rstrip("\n").split("\n")
    lines += [
        "# Generated by einsumc (target: triton). Do not edit: regenerate from the spec.",
        f"# einsumc triton backend {BACKEND_VERSION}",
        f"# Spec: {_comment(name)}",
        "#",
        "# The cascade:",
        *[f"#   {ln}" if ln else "#" for ln in spec],
        "#",
    ]
    if low.how != "as written":
        lines.append(f"# Lowered form ({low.how}):")
        lines += [f"#   {ln}" if ln else "#" for ln in print_program(prog).rstrip("\n").split("\n")]
        lines.append("#")
    lines += [f"# Kernel: {kname}",
              "#   " + _roles(low),
              "#"]
    if "split" in (getattr(low, "kernels", None) or {}):
        lines += [
            "# Split-K (flash-decoding): einsumc_kernel_split + einsumc_merge, run instead",
            "#   when the rows are few (constant, or at most 16 per grid point) and the",
            "#   programs too few for the key length; NSPLIT is chosen at launch (`_n_split`)",
            "#"]
    lines += [
              "# Usage:",
              "#   out = launch({" + ", ".join(f"{d.name!r}: ..." for d in prog.inputs)
              + "".join(f", {p!r}: ..." for p in prog.runtime_params) + "})",
              "#   # -> dict of output tensors: " + ", ".join(repr(o.name) for o in prog.outputs),
              "# On CPU tensors, import this module with TRITON_INTERPRET=1 set (before triton",
              "# is imported) to run it in Triton's interpreter.",
              "",
              "import math",
              "",
              "import torch",
              "import triton",
              "import triton.language as tl",
              ""]
    lines += HELPERS.strip("\n").split("\n")
    kernels = getattr(low, "kernels", None) or {"main": ks}
    for mode in ("main", "split", "merge"):
        if mode in kernels:
            lines += ["", ""]
            lines += _kernel_def(kernels[mode])
    lines += RUNTIME.split("\n")
    lines += _launcher(low, ks, kname)
    return "\n".join(lines).rstrip("\n") + "\n"


def _kernel_def(ks: KernelSource) -> list[str]:
    lines = []
    if ks.name == "einsumc_kernel_split":
        lines.append("# split-K (flash-decoding): the loop of einsumc_kernel over one of NSPLIT "
                     "contiguous ranges")
        lines.append("# of its key tiles (launch axis 2); the partial running state goes to "
                     "f32 scratch")
    elif ks.name == "einsumc_merge":
        lines.append("# split-K: merges the NSPLIT partial states (associative online-softmax "
                     "merge), then")
        lines.append("# computes and stores the outputs as einsumc_kernel's epilogue does")
    nospec = ", ".join(repr(a) for a in ks.nospec)
    lines.append(f"@triton.jit(do_not_specialize=[{nospec}])" if ks.nospec else "@triton.jit")
    sig = [f"    {a}," for a in ks.args] + [f"    {c}: tl.constexpr," for c in ks.consts]
    lines.append(f"def {ks.name}(")
    lines += sig
    lines.append("):")
    lines += ["    " + ln if ln else "" for ln in ks.body]
    return lines


def _comment(s: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in s)[:200]


def _roles(low: Lowering) -> str:
    parts = []
    if low.grid_vars:
        parts.append("grid axis 1: " + ", ".join(low.grid_vars))
    parts.append("grid axis 0 (row tiles): " + ", ".join(low.secondary + [low.primary]))
    parts.append(f"loop: {low.it}")
    for g, v in (("C", low.cvar), ("E", low.evar), ("F", low.fvar)):
        if v:
            parts.append(f"{g} block: {v}")
    return "; ".join(parts)


def _py_expr(x: N.Expr, low: Lowering, ctx: str) -> str:
    """Host-side Python of an extent / constant expression (ext[...] and prm[...])."""
    if isinstance(x, N.Num):
        v = x.value
        if v == math.inf:
            return "math.inf"
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    if isinstance(x, N.Extent):
        return f"ext[{x.name!r}]"
    if isinstance(x, N.Param):
        return f"prm[{x.name!r}]"
    if isinstance(x, N.Unary) and x.op == "-":
        return f"(-{_py_expr(x.operand, low, ctx)})"
    if isinstance(x, N.BinOp):
        a, b = _py_expr(x.left, low, ctx), _py_expr(x.right, low, ctx)
        if x.op == "/":
            if ctx == "extent":
                return f"_exact({a}, {b}, {ctx_text(x)!r})"
            return f"({a} / {b})"
        if x.op == "//":
            return f"({a} // {b})"
        if x.op == "%":
            return f"({a} % {b})"
        if x.op in ("+", "-", "*"):
            return f"({a} {x.op} {b})"
    if isinstance(x, N.Call):
        if x.fn == "ceil" and isinstance(x.args[0], N.BinOp) and x.args[0].op == "/":
            a = _py_expr(x.args[0].left, low, ctx)
            b = _py_expr(x.args[0].right, low, ctx)
            return f"(-(-({a}) // ({b})))"
        fns = {"sqrt": "math.sqrt", "exp": "math.exp", "log": "math.log", "abs": "abs",
               "tanh": "math.tanh", "max": "max", "min": "min", "ceil": "math.ceil"}
        if x.fn in fns:
            return f"{fns[x.fn]}(" + ", ".join(_py_expr(a, low, ctx) for a in x.args) + ")"
        if x.fn == "sigmoid":
            return f"(1 / (1 + math.exp(-{_py_expr(x.args[0], low, ctx)})))"
    raise EinsumcError([error(f"triton backend: cannot evaluate `{ctx_text(x)}` on the host")])


def ctx_text(x) -> str:
    from ...ir.printer import print_expr
    return print_expr(x)


def _launcher(low: Lowering, ks: KernelSource, kname: str) -> list[str]:
    prog = low.prog
    L = []
    e = L.append
    e("")
    e("")
    e("def _row_blocks(BLOCK_R, ext):")
    e('    """Block sizes of the row ranks of a program (secondary ranks first)."""')
    e("    blk = {}")
    if low.row_const is not None:
        e(f"    used = {1 if low.row_const <= 1 else 1 << (low.row_const - 1).bit_length()}")
    for v in low.secondary:
        r = low.var_rank[v]
        if low.row_const is None:
            e(f"    blk[{v!r}] = min(_npow2(ext[{r!r}]), max(1, BLOCK_R // 16))")
        else:
            e(f"    blk[{v!r}] = min(_npow2(ext[{r!r}]), max(1, 64 // used))")
            e(f"    used *= blk[{v!r}]")
    if low.row_const is None:
        prod = " * ".join(f"blk[{v!r}]" for v in low.secondary) or "1"
        e(f"    blk[{low.primary!r}] = max(1, BLOCK_R // ({prod}))")
    e("    return blk")
    e("")
    e("")
    # ---- heuristics / autotune (GPU); the interpreter gets explicit values
    heur = {low.block(v): v for v in low.secondary}
    if low.row_const is None:
        heur[low.block(low.primary)] = low.primary
    ext_args = {r: low.nm("extent", r) for r in {low.var_rank[v] for v in low.row_vars}}
    e("def _heuristics():")
    e("    def blk(var):")
    e("        def f(a):")
    e("            ext = {" + ", ".join(f"{r!r}: a[{n!r}]" for r, n in sorted(ext_args.items())
                                 if n in ks.args) + "}")
    e("            return _row_blocks(a['BLOCK_R'], ext)[var]")
    e("        return f")
    e("    return {" + ", ".join(f"{b!r}: blk({v!r})" for b, v in heur.items()) + "}")
    e("")
    e("")
    e(f"_heur = triton.heuristics(_heuristics())({kname}) if {bool(heur)!r} else {kname}")
    cfgs = []
    for c in GPU_CONFIGS:
        kw = "{}" if low.row_const is not None else f"{{'BLOCK_R': {c.block_r}}}"
        cfgs.append(f"triton.Config({kw}, num_warps={c.num_warps}, num_stages={c.num_stages})")
    if low.row_const is not None:  # rows are fixed: tune warps and stages only
        seen, uniq = set(), []
        for s in cfgs:
            if s not in seen:
                seen.add(s)
                uniq.append(s)
        cfgs = uniq
    e("#: the GPU tuning space (triton.autotune); the interpreter runs one config")
    e("CONFIGS = [")
    for s in cfgs:
        e(f"    {s},")
    e("]")
    keys = [ks.args[i] for i, (k, _) in enumerate(ks.argkinds) if k == "extent"
            and _not_length(low, _[1] if isinstance(_, tuple) else _)]
    e(f"_tuned = triton.autotune(configs=CONFIGS, key={keys!r})(_heur)")
    split = "split" in (getattr(low, "kernels", None) or {})
    if split:
        seen, wcfgs = set(), []
        for c in GPU_CONFIGS:
            if (c.num_warps, c.num_stages) not in seen:
                seen.add((c.num_warps, c.num_stages))
                wcfgs.append(f"triton.Config({{}}, num_warps={c.num_warps}, "
                             f"num_stages={c.num_stages})")
        e("#: split-K: rows are fixed, warps and stages are tuned")
        e("CONFIGS_SPLIT = [")
        for x in wcfgs:
            e(f"    {x},")
        e("]")
        ks_s = low.kernels["split"]
        skeys = [k for k in keys if k in ks_s.args]
        e(f"_tuned_split = triton.autotune(configs=CONFIGS_SPLIT, key={skeys!r})"
          f"({ks_s.name})")
    e("")
    e("")
    steps = None
    if split:
        steps = f"ext[{low.var_rank[low.it]!r}]" + (f" * {low.sub[1]}" if low.sub else "")
    # ---- launch
    e("def launch(args, block_r=None, num_warps=None, num_stages=None, tf32=False, "
      "autotune=None, interpret=False, split=0):")
    e('    """Run the kernel. `args`: inputs (torch tensors, any strides, f16/bf16/f32) and')
    e("    run-time params by spec name. On CUDA tensors the config is autotuned unless")
    e("    block_r/num_warps/num_stages are given; `interpret`: this module was imported")
    e("    under TRITON_INTERPRET=1 and the tensors are on the CPU. `split`: key-range")
    e("    splits (split-K, where the module has it): 0 chooses, 1 never splits, k > 1")
    e('    forces k."""')
    emit_bind_inputs(e, prog, low.var_rank)
    emit_bind_extents(e, prog, low)
    e("    prm = {}")
    int_params = low.int_params | _index_params(prog)
    for p in prog.params:
        if p.value is None:
            e(f"    prm[{p.name!r}] = _param(args, {p.name!r}, {p.name in int_params!r})")
        else:
            e(f"    prm[{p.name!r}] = {_py_expr(p.value, low, 'param')}")
            if p.name in int_params:
                e(f"    if prm[{p.name!r}] != int(prm[{p.name!r}]):")
                e(f"        raise EinsumcLaunchError(\"param '{p.name}' is used in a filter or "
                  "an index, so it must hold an integer value\")")
                e(f"    prm[{p.name!r}] = int(prm[{p.name!r}])")
    for v in low.grid_vars + low.row_vars + [x for x in (low.cvar, low.evar, low.fvar) if x]:
        r = low.var_rank[v]
        e(f"    if ext.get({r!r}) is None:")
        e(f"        raise EinsumcLaunchError('the extent of rank {r} is not bound: no input has an "
          "axis of that rank and it has no declared value')")
    # outputs
    tdt = {"f16": "torch.float16", "bf16": "torch.bfloat16", "f32": "torch.float32"}
    outs = []
    for k, d in enumerate(prog.outputs):
        shape = ", ".join(f"ext[{low.var_rank[v]!r}]" for v in d.indices)
        e(f"    y{k} = torch.zeros(({shape}{',' if len(d.indices) == 1 else ''}), "
          f"dtype={tdt[d.dtype]}, device=dev)")
        outs.append((d.name, f"y{k}"))
    e("    result = {" + ", ".join(f"{n!r}: {y}" for n, y in outs) + "}")
    # blocks of C/E/F
    for v, g in low.group.items():
        if g in ("C", "E", "F"):
            r = low.var_rank[v]
            if g == "C" and low.sub:
                e(f"    {low.block(v)} = {low.sub[0]}  # sub-tiles of the tile rank")
            else:
                e(f"    {low.block(v)} = max(16, _npow2(ext[{r!r}]))")
    grid_n = " * ".join(f"ext[{low.var_rank[v]!r}]" for v in low.grid_vars) or "1"
    e(f"    n_grid = {grid_n}")
    e("    if n_grid == 0 or " + " or ".join(f"ext[{low.var_rank[v]!r}] == 0"
                                            for v in low.row_vars) + ":")
    e("        return result")
    e("    if n_grid > 65535:")
    e("        raise EinsumcLaunchError(f'{n_grid} programs along launch axis 1 (the product "
      "of ' + " + repr(", ".join(low.grid_vars) or "-") + " + ') exceed 65535')")
    # arguments
    e("    kargs = [" + ", ".join(_call_list(low, ks)) + "]")
    blocks = {low.block(v): low.block(v) for v, g in low.group.items() if g in ("C", "E", "F")}
    e("    consts = dict(" + ", ".join(f"{k}={v}" for k, v in blocks.items())
      + (", " if blocks else "") + "PREC='tf32' if tf32 else 'ieee', "
      "UPCAST=bool(interpret and any(t.dtype == torch.bfloat16 for t in (" +
      "".join(f"x{k}, " for k in range(len(prog.inputs))) + "))))")
    # row tiles
    row_exts = {v: f"ext[{low.var_rank[v]!r}]" for v in low.row_vars}
    e("    def n_rows(BLOCK_R):")
    e("        blk = _row_blocks(BLOCK_R, ext)")
    if low.row_const is not None:
        pc = 1 if low.row_const <= 1 else 1 << (low.row_const - 1).bit_length()
        e(f"        blk[{low.primary!r}] = {pc}")
    e("        return " + " * ".join(f"((({row_exts[v]}) + blk[{v!r}] - 1) // blk[{v!r}])"
                                     for v in low.row_vars))
    if low.row_const is not None:
        pc = 1 if low.row_const <= 1 else 1 << (low.row_const - 1).bit_length()
        e("    blk = _row_blocks(0, ext)")
        prod = " * ".join([str(pc)] + [f"blk[{v!r}]" for v in low.secondary])
        e(f"    BLOCK_R = max(16, _npow2({prod}))")
        e("    consts['BLOCK_R'] = BLOCK_R")
        for v in low.secondary:
            e(f"    consts[{low.block(v)!r}] = blk[{v!r}]")
        e("    grid = (n_rows(BLOCK_R), n_grid)")
        e("    tune = autotune if autotune is not None else (not interpret and num_warps is None)")
        if split:
            e(f"    steps = {steps}")
            e("    nsplit = _n_split(split, n_rows(BLOCK_R) * n_grid, steps, dev) "
              "if split != 1 else 1")
            e("    if nsplit > 1:")
            e("        BR, sconsts, tune_s = BLOCK_R, consts, tune")
            L.extend(_split_launch(low, "n_rows(BR)", "        "))
        e("    if tune:")
        e("        _tuned[grid](*kargs, **consts)")
        e("    else:")
        e(f"        {kname}[grid](*kargs, **consts, num_warps=num_warps or 4, "
          "num_stages=num_stages or 2)")
    else:
        if split:
            rows_all = " * ".join(row_exts[v] for v in low.row_vars)
            e(f"    steps = {steps}")
            e("    # split-K when the rows are few (at most 16 per grid point: one 16-row "
              "program)")
            e(f"    if split != 1 and (({rows_all}) <= 16 or split > 1):")
            e(f"        BR = 16 if ({rows_all}) <= 16 else (block_r or {DEFAULT.block_r})")
            e("        nsplit = _n_split(split, n_rows(BR) * n_grid, steps, dev)")
            e("        if nsplit > 1:")
            e("            blk = _row_blocks(BR, ext)")
            e("            sconsts = dict(consts, BLOCK_R=BR)")
            for v in low.row_vars:
                e(f"            sconsts[{low.block(v)!r}] = blk[{v!r}]")
            e("            tune_s = autotune if autotune is not None else "
              "(not interpret and num_warps is None)")
            L.extend(_split_launch(low, "n_rows(BR)", "            "))
        e("    tune = autotune if autotune is not None else (not interpret and block_r is None)")
        e("    if tune:")
        e("        _tuned[lambda meta: (n_rows(meta['BLOCK_R']), n_grid)](*kargs, **consts)")
        e("    else:")
        e(f"        BLOCK_R = block_r or {DEFAULT.block_r}")
        e("        blk = _row_blocks(BLOCK_R, ext)")
        for v in low.row_vars:
            e(f"        consts[{low.block(v)!r}] = blk[{v!r}]")
        e(f"        {kname}[(n_rows(BLOCK_R), n_grid)](*kargs, **consts, BLOCK_R=BLOCK_R, "
          f"num_warps=num_warps or {DEFAULT.num_warps}, num_stages=num_stages or "
          f"{DEFAULT.num_stages})")
    e("    LAST_LAUNCH.clear()")
    e("    LAST_LAUNCH.update(kernel='main', nsplit=1)")
    e("    return result")
    return L


def _call_list(low: Lowering, ks: KernelSource) -> list[str]:
    """Host-side code of a kernel's arguments, in order."""
    prog = low.prog
    call = []
    for a, (kind, what) in zip(ks.args, ks.argkinds):
        if kind == "ptr":
            if a.startswith("in_"):
                call.append(f"x{[d.name for d in prog.inputs].index(what)}")
            else:
                call.append(f"y{[d.name for d in prog.outputs].index(what)}")
        elif kind == "stride":
            t, j = what
            call.append(_stride_ref(prog, t, j))
        elif kind == "extent":
            call.append(f"ext[{what!r}]")
        elif kind == "param":
            call.append(f"prm[{what!r}]")
        elif kind == "scratch":
            call.append(f"ws[{what!r}]")
        elif kind == "nsplit":
            call.append("nsplit")
    return call


def _split_launch(low: Lowering, rows: str, ind: str) -> list[str]:
    """Host code of the split-K launch (`nsplit`, `sconsts`, `BR`, `tune_s` are bound)."""
    ks_s, ks_m = low.kernels["split"], low.kernels["merge"]
    L = []

    def e(x):
        L.append(ind + x)
    e("# split-K: partial states of NSPLIT key ranges in f32 scratch, then the merge")
    e(f"n_prog = {rows} * n_grid")
    e("ws = {}")
    for t in low.carried:
        size = " * ".join("BR" if g == "R" else low._group_block(g)
                          for g in low.carried_groups(t)) or "1"
        e(f"ws[{t!r}] = torch.empty((nsplit * n_prog * {size},), dtype=torch.float32, "
          "device=dev)")
    e("sargs = [" + ", ".join(_call_list(low, ks_s)) + "]")
    e("margs = [" + ", ".join(_call_list(low, ks_m)) + "]")
    e(f"sgrid = ({rows}, n_grid, nsplit)")
    e("if tune_s:")
    e("    _tuned_split[sgrid](*sargs, **sconsts)")
    e("else:")
    e(f"    {ks_s.name}[sgrid](*sargs, **sconsts, num_warps=num_warps or 4, "
      "num_stages=num_stages or 2)")
    e(f"{ks_m.name}[({rows}, n_grid)](*margs, **sconsts, num_warps=4, num_stages=1)")
    e("LAST_LAUNCH.clear()")
    e("LAST_LAUNCH.update(kernel='split', nsplit=nsplit, grid=sgrid)")
    e("return result")
    return L


def _stride_ref(prog, t, j) -> str:
    ins = [d.name for d in prog.inputs]
    if t in ins:
        return f"x{ins.index(t)}.stride({j})"
    outs = [d.name for d in prog.outputs]
    return f"y{outs.index(t)}.stride({j})"


def _not_length(low: Lowering, rank: str) -> bool:
    """Ranks whose extent sizes blocks (tune per value) rather than sequence lengths."""
    vs = [v for v, r in low.var_rank.items() if r == rank]
    return any(low.group.get(v) in ("E", "F") or v in low.secondary for v in vs)


def emit_bind_extents(e, prog, low) -> None:
    """Launcher lines that bind every rank's extent in dependency order: a declared extent
    is computed and checked against the one the inputs gave."""
    for r in _rank_order(prog):
        if r.extent is None:
            e(f"    if {r.name!r} not in ext:")
            e(f"        ext[{r.name!r}] = None")
            continue
        code = _py_expr(r.extent, low, "extent")
        e(f"    _v = {code}")
        e(f"    if {r.name!r} in ext and ext[{r.name!r}] != _v:")
        e(f"        raise EinsumcLaunchError(f\"rank {r.name} = {{_v}} from its declaration, "
          f"but {{ext[{r.name!r}]}} from {{src[{r.name!r}]}}\")")
        e(f"    ext[{r.name!r}] = _v")


def emit_bind_inputs(e, prog, var_rank) -> None:
    """Launcher lines that check the arguments, take the inputs as tensors `x0, x1, ...`
    on one device `dev`, and bind each rank's extent from their shapes (`ext`, `src`)."""
    e("    ext, src = {}, {}")
    known = [d.name for d in prog.inputs] + list(prog.runtime_params)
    e(f"    unknown = sorted(set(args) - set({known!r}))")
    e("    if unknown:")
    e(f"        raise EinsumcLaunchError(f\"unexpected argument {{unknown[0]!r}}; the cascade "
      f"takes: {', '.join(sorted(known))}\")")
    for k, d in enumerate(prog.inputs):
        e(f"    x{k} = _as_tensor(args, {d.name!r}, {len(d.indices)})")
        for j, v in enumerate(d.indices):
            r = var_rank[v]
            e(f"    _bind(ext, src, {r!r}, x{k}.shape[{j}], {f'axis {j} of input {d.name!r}'!r})")
    e("    dev = x0.device" if prog.inputs else "    dev = torch.device('cpu')")
    for k in range(1, len(prog.inputs)):
        e(f"    if x{k}.device != dev:")
        e("        raise EinsumcLaunchError('inputs are on different devices')")


def _rank_order(prog):
    done, out = set(), []
    pending = list(prog.ranks)
    for _ in range(len(pending) + 1):
        rest = []
        for r in pending:
            deps = set() if r.extent is None else {n.name for n in N.walk(r.extent)
                                                   if isinstance(n, N.Extent)}
            if deps <= done:
                out.append(r)
                done.add(r.name)
            else:
                rest.append(r)
        if not rest:
            break
        pending = rest
    return out


def _index_params(prog) -> set:
    out = set()
    for e in prog.einsums:
        xs = [e.filter] if e.filter is not None else []
        for x in (e.rhs, e.filter):
            if x is None:
                continue
            for a in N.walk(x):
                if isinstance(a, N.Access):
                    xs += list(a.indices)
        for x in xs:
            out |= {n.name for n in N.walk(x) if isinstance(n, N.Param)}
    return out
