"""`einsumc bench SPEC --target triton --shape ...`: the generated kernel against torch SDPA
and FlexAttention on a GPU, in the same run on the same inputs, correctness first.

Without a CUDA GPU it says so and exits 0: nothing is measured (no CPU number stands in
for a GPU one). On a GPU:

1. inputs are made on the GPU (seeded, the spec's declared dtypes unless `--dtype`);
2. the einsumc kernel runs once (autotuning) and its output is checked against SDPA (and
   against FlexAttention) before any time is taken; a mismatch aborts with exit 1;
3. each contender is timed with `triton.testing.do_bench` (median), and the table gives
   ms and TFLOP/s (2 * heads * P * M * (E + F) flops times the mask's density).

The baselines are derived from the cascade itself (`baselines.py`): the score maps
become a FlexAttention `score_mod`, the filters its `mask_mod`, and SDPA gets a dense
bias / mask when the scores are `score + bias`. A cascade that one call cannot express
(several outputs, a learnable sink) is timed alone, with the reason. TFLOP/s count the
present (unmasked) points only; "einsumc speed" is the contender's time over einsumc's
(the issue's goal: at least 0.9x against FlexAttention, 0.7x against SDPA).
"""
from __future__ import annotations

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
    return run_bench(args, torch, "cuda", triton.testing.do_bench)


def run_bench(args, torch, device: str, timer, collect: list | None = None) -> int:
    """The benchmark on `device` ("cuda"; the tests run it on "cpu" through the
    interpreter with a plain timer, to check everything but the numbers). With `collect`,
    each timed contender is also appended as (name, ms, TFLOP/s or None)."""
    from ...cli import _load, _parse_assignments
    from ...inputs import resolve_extents
    from ...ir.symbolic import evaluate
    from . import baselines as BL
    from .target import TritonTarget

    prog = _load(args.spec)
    given = _parse_assignments(args.shape, "shape")
    shapes = resolve_extents(prog, given)
    params = _parse_assignments(getattr(args, "param", None), "param", float)
    tdt = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
    forced = getattr(args, "dtype", None)
    g = torch.Generator(device=device).manual_seed(getattr(args, "seed", 0) or 0)
    ins = {}
    for d in prog.inputs:
        shape = [shapes[prog.rank_of_var(v).name] for v in d.indices]
        ins[d.name] = torch.randn(*shape, device=device, generator=g,
                                  dtype=tdt[forced or d.dtype])
    if "slope" in ins:  # ALiBi slopes are positive
        ins["slope"] = ins["slope"].abs()
    fn = TritonTarget().compile(prog)
    out = fn(**ins, **params)
    oname, o = next(iter(out.items()))
    results = [("einsumc (triton)", lambda: fn(**ins, **params))]
    flops = None
    all_params = dict(params)
    for pd in prog.params:
        if pd.value is not None:
            all_params[pd.name] = float(evaluate(pd.value, shapes, all_params))
    try:
        pl = BL.plan(prog, shapes, all_params)
        checked = BL.verify(prog, given, params, torch)
    except BL.Unavailable as exc:
        print(f"note: no baselines: {exc}; einsumc timed alone")
        pl = None
    failed = 0
    if pl is not None:
        decl = {d.name: d.indices for d in prog.inputs}
        q = BL.flatten(ins["Q"], decl["Q"], pl.q_axes, torch)
        k = BL.flatten(ins["K"], decl["K"], pl.k_axes, torch)
        v = BL.flatten(ins["V"], decl["V"], pl.v_axes, torch)
        mine = BL.flatten(o, prog.outputs[0].indices, pl.o_axes, torch)
        tol = 2e-2 if o.dtype != torch.float32 else 2e-3
        heads, P, M, E, F = q.shape[1], q.shape[2], k.shape[2], q.shape[3], v.shape[3]
        makers = [("torch SDPA", lambda: BL.sdpa_baseline(pl, ins, torch, heads, P, M, device)),
                  ("FlexAttention", lambda: BL.flex_baseline(pl, ins, torch,
                                                             compile_=device == "cuda"))]
        for name, make in makers:
            if checked.get(name):
                print(f"note: {name}: {checked[name]}; not timed")
                continue
            try:
                run = make()
                ref = run(q, k, v)
            except BL.Unavailable as exc:
                print(f"note: {name}: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - a torch without FlexAttention, a compiler failure
                print(f"note: {name} unavailable: {type(exc).__name__}: {exc}")
                continue
            # SDPA gives NaN where a row is fully masked; the cascade defines 0 there
            err = (mine.float() - torch.nan_to_num(ref.float())).abs().max().item()
            print(f"check: {oname} vs {name}: max abs err {err:.3e} (tolerance {tol})")
            if not err <= tol:
                failed += 1
                continue
            results.append((name, lambda run=run: run(q, k, v)))
        if pl.state0 is not None:
            print("note: FlexAttention returns its log-sum-exp and an epilogue merges the "
                  "cascade's initial running state (max, denominator, numerator) = "
                  f"{pl.state0}: two launches")
        density = 1.0
        if pl.mask is not None:
            density = BL.mask_density(pl, ins, torch, heads, P, M, device)
        flops = 2.0 * heads * P * M * (E + F) * density  # Q·K and P·V
        print(f"variant: {heads} heads x P={P} x M={M}, head dim {E}, scale {pl.scale:.4g}, "
              f"mask density {density:.3f}")
    if failed:
        print("einsumc bench: einsumc and a baseline that should compute the same cascade "
              "differ; not timing (check with `einsumc run --compare`)", file=sys.stderr)
        return 1
    print(f"{'contender':<20} {'ms':>10} {'TFLOP/s':>10} {'einsumc speed':>14}")
    base = None
    for name, run in results:
        ms = timer(run)
        base = base or ms
        tf = f"{flops / ms / 1e9:.1f}" if flops else "-"
        print(f"{name:<20} {ms:>10.4f} {tf:>10} {ms / base:>13.2f}x")
        if collect is not None:
            collect.append((name, ms, flops / ms / 1e9 if flops else None))
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else device}")
    return 0
