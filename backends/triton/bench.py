"""`einsumc bench SPEC --target triton --shape ...`: the generated kernel against torch SDPA
and FlexAttention on a GPU, in the same run on the same inputs, correctness first.

Without a CUDA GPU it says so and exits 0: nothing is measured (no CPU number stands in
for a GPU one). On a GPU:

1. inputs are made on the GPU (seeded, the spec's declared dtypes unless `--dtype`);
2. the einsumc kernel runs once (autotuning) and its output is checked against SDPA (and
   against FlexAttention) before any time is taken; a mismatch aborts with exit 1;
3. each contender is timed with `triton.testing.do_bench` (median), and the table gives
   ms and TFLOP/s (4 * batch * P * M * E flops; half of that under a causal mask).

The baselines need the layout of plain multi-head attention (einsumc.bench._layout) and
take `--causal` (bottom-right aligned, as the examples) and `--scale` (default
1/sqrt(head dim)); other cascades are timed alone.
"""
from __future__ import annotations

import math
import sys


def bench_triton(args) -> int:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the triton target
        print("einsumc bench --target triton: torch is not installed; nothing measured")
        return 0
    if not torch.cuda.is_available():
        print("einsumc bench --target triton: no CUDA GPU on this machine; nothing measured "
              "(the generated kernels run on the CPU only in Triton's interpreter, which is "
              "not a performance measurement)")
        return 0
    return _bench_gpu(args, torch)


def _bench_gpu(args, torch) -> int:  # pragma: no cover - needs a GPU
    import triton

    from ...bench import _layout
    from ...cli import _load, _parse_assignments
    from ...diagnostics import EinsumcError
    from ...inputs import resolve_extents
    from .target import TritonTarget

    prog = _load(args.spec)
    shapes = resolve_extents(prog, _parse_assignments(args.shape, "shape"))
    params = _parse_assignments(getattr(args, "param", None), "param", float)
    tdt = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
    forced = getattr(args, "dtype", None)
    g = torch.Generator(device="cuda").manual_seed(getattr(args, "seed", 0) or 0)
    ins = {}
    for d in prog.inputs:
        shape = [shapes[prog.rank_of_var(v).name] for v in d.indices]
        ins[d.name] = torch.randn(*shape, device="cuda", generator=g,
                                  dtype=tdt[forced or d.dtype])
    fn = TritonTarget().compile(prog)
    out = fn(**ins, **params)
    oname, o = next(iter(out.items()))
    results = [("einsumc (triton)", lambda: fn(**ins, **params))]
    flops = None
    try:
        batch, p, m, e, f = _layout(prog)
    except EinsumcError as exc:
        print(f"note: no baselines: {str(exc).splitlines()[0]}")
        batch = None
    if batch is not None:
        names = {d.name: d.indices for d in prog.inputs}
        n = {v: shapes[prog.rank_of_var(v).name] for d in prog.inputs for v in d.indices}
        P, M, E = n[p], n[m], n[e]
        nb = math.prod(n[v] for v in batch)

        def bpe(t, axes, a, b):
            perm = [axes.index(x) for x in batch] + [axes.index(a), axes.index(b)]
            t = t.permute(perm)
            return t.reshape((1, nb) + tuple(t.shape[-2:]))
        q = bpe(ins["Q"], names["Q"], p, e)
        k = bpe(ins["K"], names["K"], m, e)
        v = bpe(ins["V"], names["V"], m, f)
        scale = args.scale if getattr(args, "scale", None) is not None else 1 / math.sqrt(E)
        mask = None
        if args.causal:
            mask = torch.ones(P, M, dtype=torch.bool, device="cuda").tril(M - P)
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
            q, k, v, attn_mask=mask, scale=scale)
        ref = sdpa()
        oaxes = prog.outputs[0].indices
        mine = bpe(o, oaxes, p, f).to(ref.dtype)
        tol = 2e-2 if o.dtype != torch.float32 else 2e-3
        err = (mine.float() - ref.float()).abs().max().item()
        print(f"check: {oname} vs SDPA max abs err {err:.3e} (tolerance {tol})")
        if not (err <= tol):
            print("einsumc bench: outputs differ from SDPA; not timing", file=sys.stderr)
            return 1
        results.append(("torch SDPA", sdpa))
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            flex = torch.compile(flex_attention)
            bm = None
            if args.causal:
                off = M - P
                bm = create_block_mask(lambda b, h, qi, ki: ki <= qi + off, None, None, P, M)
            fo = flex(q, k, v, block_mask=bm, scale=scale)
            ferr = (fo.float() - ref.float()).abs().max().item()
            print(f"check: FlexAttention vs SDPA max abs err {ferr:.3e}")
            results.append(("FlexAttention", lambda: flex(q, k, v, block_mask=bm, scale=scale)))
        except Exception as exc:  # FlexAttention needs a recent torch with a compiler
            print(f"note: FlexAttention unavailable: {type(exc).__name__}: {exc}")
        flops = 4.0 * nb * P * M * E * (0.5 if args.causal else 1.0)
    print(f"{'contender':<20} {'ms':>10} {'TFLOP/s':>10}")
    for name, run in results:
        ms = triton.testing.do_bench(run)
        tf = f"{flops / ms / 1e9:.1f}" if flops else "-"
        print(f"{name:<20} {ms:>10.4f} {tf:>10}")
    print(f"device: {torch.cuda.get_device_name()}")
    return 0
