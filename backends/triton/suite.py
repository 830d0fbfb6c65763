"""The GPU benchmark suite of issue #5, in one command, for the session that gets a GPU:

    python -m einsumc.backends.triton.suite [-o results.md] [--only mha,causal]
                                            [--lengths 4096,16384] [--dims 64,128]

For each softmax variant × head dim × length it runs `einsumc bench --target triton`
(`bench.run_bench`: derived SDPA and FlexAttention baselines, correctness first, then
`triton.testing.do_bench`) and writes one Markdown row per case as soon as it is measured
(so a run cut short by the device's 10-minute limit keeps what it measured): the einsumc
time, each baseline's time, and einsumc's speed relative to each (the issue's goal: at
least 0.9x FlexAttention and 0.7x SDPA on an H100, head dims 64 and 128, M = P = 4K-16K,
causal and not). Head dim 128 uses the example with `E = 64, F = 64` rebound to 128.

Tokens per case are fixed (B·M = 16K, H = 16), as FlashAttention's benchmarks do. Without
a CUDA GPU it says so and exits 0; `--device cpu --tiny` runs the same wiring through
Triton's interpreter at toy sizes (the tests do), which measures nothing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "attention"
if not EXAMPLES.is_dir():  # installed package: the examples ship with the source tree only
    EXAMPLES = Path.cwd() / "examples" / "attention"

#: name -> (example, run-time params)
VARIANTS = {
    "mha": ("mha_1pass.ein", ""),
    "causal": ("mha_causal_1pass.ein", ""),
    "window": ("sliding_window.ein", "W=1024"),
    "alibi": ("alibi.ein", ""),
    "softcap": ("softcap.ein", "cap=30"),
    "gqa": ("gqa.ein", ""),
    "sink": ("learnable_sink_1pass.ein", "s0=0.5"),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m einsumc.backends.triton.suite")
    ap.add_argument("-o", "--output", help="Markdown file to append the table to")
    ap.add_argument("--only", help="comma-separated variants: " + ",".join(VARIANTS))
    ap.add_argument("--lengths", default="4096,16384")
    ap.add_argument("--dims", default="64,128")
    ap.add_argument("--dtype", default="f16", choices=("f16", "bf16", "f32"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="toy sizes (with --device cpu)")
    a = ap.parse_args(argv)
    import torch
    if a.device == "cuda" and not torch.cuda.is_available():
        print("einsumc triton suite: no CUDA GPU on this machine; nothing measured")
        return 0
    names = a.only.split(",") if a.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    lengths = [int(x) for x in a.lengths.split(",")]
    dims = [int(x) for x in a.dims.split(",")]
    if a.tiny:
        lengths, dims = [40], [16]
    timer = _timer(a.device, torch)
    header = ("| variant | head dim | M = P | B x H | einsumc ms | SDPA ms | Flex ms "
              "| einsumc speed vs SDPA | vs Flex | einsumc TFLOP/s |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    device = torch.cuda.get_device_name() if a.device == "cuda" else "cpu (interpreter)"
    _emit(a.output, f"\nDevice: {device}, dtype {a.dtype}, torch {torch.__version__}\n\n"
                    + header)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            example, params = VARIANTS[name]
            text = (EXAMPLES / example).read_text()
            for d in dims:
                spec = Path(tmp) / f"{name}_{d}.ein"
                spec.write_text(_with_head_dim(text, d))
                for n in lengths:
                    heads, batch = (2, 1) if a.tiny else (16, max(1, 16384 // n))
                    shape = f"B={batch},H={heads},M={n},P={n}"
                    if name == "gqa":
                        shape = f"B={batch},H={max(1, heads // 4)},G=4,M={n},P={n}"
                    row = _case(spec, shape, params, a, torch, timer)
                    failures += row is None
                    cells = row or ("failed",) + ("-",) * 5
                    _emit(a.output, f"| {name} | {d} | {n} | {batch} x {heads} | "
                                    + " | ".join(cells) + " |")
    return 1 if failures else 0


def _case(spec, shape, params, a, torch, timer):
    from .bench import run_bench
    got: list = []
    args = argparse.Namespace(spec=str(spec), shape=shape, param=params or None,
                              dtype=a.dtype, seed=0)
    print(f"== {spec.stem} {shape}", file=sys.stderr)
    if run_bench(args, torch, a.device, timer, collect=got) != 0 or not got:
        return None
    t = {name: (ms, tf) for name, ms, tf in got}
    mine = t["einsumc (triton)"][0]

    def ms(k):
        return f"{t[k][0]:.3f}" if k in t else "-"

    def speed(k):
        return f"{t[k][0] / mine:.2f}x" if k in t else "-"
    tf = t["einsumc (triton)"][1]
    return (f"{mine:.3f}", ms("torch SDPA"), ms("FlexAttention"), speed("torch SDPA"),
            speed("FlexAttention"), f"{tf:.1f}" if tf else "-")


def _with_head_dim(text: str, d: int) -> str:
    if d == 64:
        return text
    if "E = 64, F = 64" not in text:
        raise SystemExit(f"cannot rebind the head dim of this example to {d}")
    return text.replace("E = 64, F = 64", f"E = {d}, F = {d}", 1)


def _timer(device, torch):
    if device == "cuda":  # pragma: no cover - needs a GPU
        import triton
        return triton.testing.do_bench
    import time

    def once(run):
        t = time.perf_counter()
        run()
        return (time.perf_counter() - t) * 1e3
    return once


def _emit(path, line: str) -> None:
    print(line)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
