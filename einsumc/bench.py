"""`einsumc bench`: time a compiled cascade against baselines measured in the same run.

Each measurement runs in a fresh subprocess that makes the same seeded inputs, so peak
memory (the growth of the process's peak resident set over what the inputs occupy) is
measured per contender. Baselines, for softmax attention over inputs `Q`, `K`, `V`:
`torch.nn.functional.scaled_dot_product_attention` on the CPU, and a naive NumPy softmax
attention (one (P, M) score matrix per batch-head). Outputs are compared with the SDPA
baseline before any ratio is printed.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

from .diagnostics import EinsumcError, error


def _layout(prog):
    """(batch vars, p, m, e, f) of a plain attention spec with inputs Q, K, V, one output."""
    ins = {d.name: d.indices for d in prog.inputs}
    if not {"Q", "K", "V"} <= set(ins) or len(prog.outputs) != 1:
        raise EinsumcError([error("bench baselines need inputs named Q, K, V and one output "
                                  "(softmax attention); run with --baselines '' to time the "
                                  "target alone")], prog.source)
    q, k, v = (set(ins[n]) for n in "QKV")
    o = set(prog.outputs[0].indices)
    try:
        (p,) = (q & o) - k - v
        (m,) = (k & v) - q
        (e,) = (q & k) - o - {m}
        (f,) = (v & o) - q
    except ValueError:
        raise EinsumcError([error("bench baselines: cannot tell the query, key and head-dim "
                                  "ranks of Q, K, V apart")], prog.source) from None
    batch = [x for x in ins["Q"] if x not in (p, e)]
    if set(batch) != k - {e, m} or set(batch) != v - {f, m}:
        raise EinsumcError([error("bench baselines need the same batch/head ranks on Q, K and V "
                                  "(multi-head attention layout)")], prog.source)
    return batch, p, m, e, f


def _to_bpe(arr, axes, batch, a, b):
    """Permute an array with named axes to (batch..., a, b) and flatten the batch."""
    perm = [axes.index(x) for x in batch] + [axes.index(a), axes.index(b)]
    t = arr.transpose(perm)
    return t.reshape((-1,) + t.shape[-2:])


def _child(spec_json: str) -> None:
    """Run one contender in this (fresh) process and print a JSON line with the results."""
    import resource
    import time

    cfg = json.loads(spec_json)
    from .cli import _load
    from .inputs import random_inputs
    prog = _load(cfg["spec"])
    inputs = random_inputs(prog, cfg["shapes"], seed=cfg["seed"])
    params = cfg["params"]
    which = cfg["which"]
    run = None
    if which == "target":
        fn = prog.compile(target=cfg["target"])

        def run():
            out = fn(**inputs, **params)
            return np.asarray(next(iter(out.values())), dtype=np.float32)
    else:
        batch, p, m, e, f = _layout(prog)
        ax = {d.name: list(d.indices) for d in prog.inputs}
        out_axes = list(prog.outputs[0].indices)
        q = _to_bpe(inputs["Q"], ax["Q"], batch, p, e)
        k = _to_bpe(inputs["K"], ax["K"], batch, m, e)
        v = _to_bpe(inputs["V"], ax["V"], batch, m, f)
        P, M, E = q.shape[1], k.shape[1], q.shape[2]
        scale = cfg["scale"] if cfg["scale"] is not None else 1 / math.sqrt(E)
        causal = cfg["causal"]
        oshape = [inputs["Q"].shape[ax["Q"].index(x)] for x in batch]

        def back(o):  # (Bflat, P, F) -> the spec's output layout
            o = o.reshape(oshape + list(o.shape[-2:]))
            names = batch + [p, f]
            return np.ascontiguousarray(o.transpose([names.index(x) for x in out_axes]))

        if which == "sdpa":
            import torch
            # contiguous 4-D (1, B*H, N, D): SDPA's fused CPU flash kernel (3-D inputs or an
            # explicit mask take the much slower math path)
            tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(x))[None] for x in (q, k, v))
            kw = {}
            if causal and M == P:
                kw["is_causal"] = True
            elif causal:  # bottom-right aligned: an explicit mask (math path)
                kw["attn_mask"] = torch.ones(P, M, dtype=torch.bool).tril(diagonal=M - P)

            def run():
                with torch.no_grad():
                    o = torch.nn.functional.scaled_dot_product_attention(
                        tq, tk, tv, scale=scale, **kw)
                return back(o[0].numpy())
        else:
            def run():
                out = np.empty((q.shape[0], P, v.shape[2]), np.float32)
                keep = np.tril(np.ones((P, M), bool), M - P) if causal else None
                for i in range(q.shape[0]):
                    s = (q[i] @ k[i].T) * np.float32(scale)
                    if keep is not None:
                        s = np.where(keep, s, -np.inf)
                    s = np.exp(s - s.max(axis=1, keepdims=True))
                    out[i] = (s / s.sum(axis=1, keepdims=True)) @ v[i]
                return back(out)

    with open("/proc/self/statm") as fh:
        rss_before = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    out = None
    for _ in range(cfg["repeat"]):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    extra = max(0, peak - max(rss_before, peak_before))
    np.save(cfg["out"], out)
    print(json.dumps({"time_s": min(times), "peak_extra_bytes": extra}))


def _measure(cfg: dict) -> dict:
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", "import sys; from einsumc.bench import _child; "
                           "_child(sys.argv[1])", json.dumps(cfg)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, NumPy {np.__version__}"


def run_bench(args) -> int:
    from .cli import _load, _parse_assignments
    prog = _load(args.spec)
    shapes = _parse_assignments(args.shape, "shape")
    params = _parse_assignments(args.param, "param", float)
    from .inputs import resolve_extents
    resolve_extents(prog, shapes)  # errors early, in the parent
    baselines = [b for b in (args.baselines or "").split(",") if b]
    for b in baselines:
        if b not in ("sdpa", "naive"):
            raise EinsumcError([error(f"unknown baseline '{b}'; choices: sdpa, naive")])
    if baselines:
        _layout(prog)
    if args.target != "numpy":
        from .backends import get_target
        try:
            get_target(args.target)
        except KeyError as exc:
            raise EinsumcError([error(exc.args[0])]) from None
    spec = str(os.path.abspath(args.spec)) if args.spec != "-" else "-"
    print(f"bench {args.spec}  shape {args.shape}  target {args.target}"
          + ("  causal baselines" if args.causal else ""))
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for which in ["target"] + baselines:
            cfg = {"spec": spec, "shapes": shapes, "params": params, "seed": args.seed,
                   "which": which, "target": args.target, "causal": args.causal,
                   "scale": args.scale, "repeat": max(1, args.repeat),
                   "out": os.path.join(tmp, f"{which}.npy")}
            res = _measure(cfg)
            label = {"target": f"einsumc ({args.target})", "sdpa": "torch SDPA (CPU)",
                     "naive": "naive NumPy"}[which]
            rows.append((which, label, res))
            if "error" not in res:
                outs[which] = np.load(cfg["out"])
        base = next((r for w, _, r in rows if w == "sdpa"), None)
        print(f"{'':<22}{'time (s)':>10}{'peak extra (MiB)':>18}{'time vs SDPA':>14}")
        for which, label, res in rows:
            if "error" in res:
                print(f"{label:<22}  failed: {res['error']}")
                continue
            ratio = ""
            if base and "error" not in base:
                ratio = f"{res['time_s'] / base['time_s']:.2f}x"
            print(f"{label:<22}{res['time_s']:>10.3f}{res['peak_extra_bytes'] / 2**20:>18.1f}"
                  f"{ratio:>14}")
        ok = True
        if "target" in outs:
            for which in baselines:
                if which in outs:
                    a, b = outs["target"].astype(np.float64), outs[which].astype(np.float64)
                    finite = np.isfinite(b)
                    err = float(np.abs(a - b)[finite].max()) if finite.any() else float("nan")
                    print(f"max abs err vs {which}: {err:.3e}")
                    if not err <= 1e-3:
                        ok = False
        if not ok:
            print("warning: the target's output does not match a baseline: the baseline may not "
                  "express this variant (check --causal and --scale)")
    return 0
