"""The benchmark's torch baselines derived from the cascade (backends/triton/baselines.py):
for every softmax example, FlexAttention (eager, on the CPU) and, where the scores are
`score + bias`, SDPA compute what the NumPy backend computes; what one call cannot express
is refused with a reason."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.nn.attention.flex_attention")

import einsumc  # noqa: E402
from einsumc.backends.triton import baselines as BL  # noqa: E402
from einsumc.inputs import random_inputs, resolve_extents  # noqa: E402
from einsumc.ir.symbolic import evaluate  # noqa: E402

EX = Path(__file__).resolve().parent.parent / "examples"
PARAMS = {"cap": 5.0, "W": 7.0, "s0": 0.3}
#: spec, shapes, SDPA expected to apply
CASES = [
    ("attention/mha.ein", dict(B=1, H=2, M=40, P=33, E=16, F=16), True),
    ("attention/mha_1pass.ein", dict(B=1, H=2, M=300, P=33), True),
    ("attention/mha_causal_1pass.ein", dict(B=1, H=2, M=300, P=280), True),
    ("attention/causal.ein", dict(B=1, H=2, M=30, P=40), True),
    ("attention/gqa.ein", dict(B=1, H=2, G=3, M=40, P=33), True),
    ("attention/mqa.ein", dict(B=2, H=3, M=40, P=33), True),
    ("attention/sqa.ein", dict(B=1, H=2, HQ=4, M=40, P=33), True),
    ("attention/alibi.ein", dict(B=1, H=2, M=40, P=33), True),
    ("attention/softcap.ein", dict(B=1, H=2, M=40, P=33), False),
    ("attention/sliding_window.ein", dict(B=1, H=2, M=40, P=33), True),
    ("attention/sinks_window.ein", dict(B=1, H=2, M=40, P=33), True),
    ("attention/cross_attention.ein", dict(B=1, H=2, M=40, P=33, F=24), True),
    ("attention/decode.ein", dict(B=1, H=2, M=70), True),
    ("fusemax/cascade4_3pass.ein", dict(M=40, P=33), True),
    ("fusemax/cascade5_1pass.ein", dict(M=512, P=33), True),
]


def _setup(spec, shapes):
    prog = einsumc.load(EX / spec)
    ext = resolve_extents(prog, shapes)
    params = {k: v for k, v in PARAMS.items() if k in prog.runtime_params}
    for pd in prog.params:
        if pd.value is not None:
            params[pd.name] = float(evaluate(pd.value, ext, params))
    ins = random_inputs(prog, shapes, seed=1)
    if "slope" in ins:
        ins["slope"] = np.abs(ins["slope"])
    run = {k: v for k, v in params.items() if k in prog.runtime_params}
    ref = np.asarray(next(iter(prog.compile("numpy")(**ins, **run).values())), np.float32)
    tensors = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in ins.items()}
    return prog, ext, params, tensors, torch.from_numpy(ref)


def _qkvo(prog, pl, t, ref):
    decl = {d.name: d.indices for d in prog.inputs}
    return (BL.flatten(t["Q"], decl["Q"], pl.q_axes, torch),
            BL.flatten(t["K"], decl["K"], pl.k_axes, torch),
            BL.flatten(t["V"], decl["V"], pl.v_axes, torch),
            BL.flatten(ref, prog.outputs[0].indices, pl.o_axes, torch))


@pytest.mark.parametrize("spec,shapes,sdpa", CASES, ids=[c[0].split("/")[1][:-4] for c in CASES])
def test_derived_baselines_match_numpy(spec, shapes, sdpa):
    prog, ext, params, t, ref = _setup(spec, shapes)
    pl = BL.plan(prog, ext, params)
    q, k, v, o = _qkvo(prog, pl, t, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fo = BL.flex_baseline(pl, t, torch, compile_=False)(q, k, v)
    assert (fo - o).abs().max().item() < 1e-5
    if not sdpa:
        with pytest.raises(BL.Unavailable, match="not `score \\+ bias`"):
            BL.sdpa_baseline(pl, t, torch, q.shape[1], q.shape[2], k.shape[2], "cpu")
        return
    so = BL.sdpa_baseline(pl, t, torch, q.shape[1], q.shape[2], k.shape[2], "cpu")(q, k, v)
    # SDPA gives NaN on a fully masked row (causal with P > M); the cascade gives 0
    assert (torch.nan_to_num(so) - o).abs().max().item() < 1e-5


def test_the_variant_is_read_off_the_spec():
    prog, ext, params, *_ = _setup("attention/sinks_window.ein", dict(B=1, H=2, M=40, P=33))
    pl = BL.plan(prog, ext, params)
    assert pl.keys == (("m1", 8), ("m0", 1)) and pl.p == "p" and pl.mask is not None
    assert [v for v, _ in pl.batch] == ["b", "h"] and abs(pl.scale - 0.125) < 1e-12
    prog, ext, params, *_ = _setup("attention/gqa.ein", dict(B=1, H=2, G=3, M=40, P=33))
    pl = BL.plan(prog, ext, params)
    assert pl.q_axes == ("b", "h", "g", "p", "e") and pl.k_axes == ("b", "h", "m", "e")


_HDR = ("rank B, H, M, P, E = 8, F = 8\ninput Q[b, h, e, p], K[b, h, e, m], V[b, h, f, m]\n"
        "output O[b, h, f, p]\n")
_TAIL = ("GM[b, h, p] = S[b, h, m, p] :: max(m)\nSN[b, h, m, p] = exp(S[b, h, m, p] - GM[b, h, p])\n"
         "SD[b, h, p] = SN[b, h, m, p]\nO[b, h, f, p] = SN[b, h, m, p] * V[b, h, f, m] / SD[b, h, p]\n")
_QK = "QK[b, h, m, p] = Q[b, h, e, p] * K[b, h, e, m]\n"
_S = "S[b, h, m, p] = Q[b, h, e, p] * K[b, h, e, m]\n"


@pytest.mark.parametrize("source,why", [
    (_HDR.replace("output", "param s0\noutput") + _S + _TAIL.replace(" / SD[b, h, p]",
                                                                      " / SD[b, h, p] * s0"),
     "param `s0` is used outside the scores"),
    ("rank E = 4, M, P\ninput Q[e, p], K[e, m], V[e, m]\noutput O[e, p], D[p]\n"
     "S[m, p] = Q[e, p] * K[e, m]\nX[p] = S[m, p] :: max(m)\nN[m, p] = exp(S[m, p] - X[p])\n"
     "D[p] = N[m, p]\nO[e, p] = N[m, p] * V[e, m] / D[p]\n", "2 outputs"),
    ("rank E = 4, M, P\ninput A[e, p], K[e, m], V[e, m]\noutput O[e, p]\n"
     "O[e, p] = A[e, p] * K[e, m] * V[e, m]\n", "inputs named Q, K and V"),
])
def test_what_one_call_cannot_express_is_refused(source, why):
    prog = einsumc.load(EX / source if source.endswith(".ein") else source)
    with pytest.raises(BL.Unavailable, match=why):
        BL.plan(prog, {"M": 40, "P": 33, "E": 4, "B": 1, "H": 2, "M0": 16, "M1": 3, "F": 64},
                {"s0": 0.3})


def _bench(spec, shape, param=None, dtype="f32"):
    import argparse
    import time

    from einsumc.backends.triton.bench import run_bench

    def timer(run):
        t = time.perf_counter()
        run()
        return (time.perf_counter() - t) * 1e3
    args = argparse.Namespace(spec=str(EX / spec), shape=shape, param=param, dtype=dtype,
                              seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_bench(args, torch, "cpu", timer)


@pytest.fixture(autouse=True)
def _quiet_flex():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager FlexAttention warns that it is unfused
        yield


def test_bench_harness_checks_then_times_on_the_cpu(capsys):
    """The GPU benchmark's code path, run on the CPU (the kernel through the interpreter):
    derived baselines are checked against the kernel before anything is timed."""
    assert _bench("attention/alibi.ein", "B=1,H=2,M=70,P=50") == 0
    out = capsys.readouterr().out
    assert "vs torch SDPA: max abs err" in out and "vs FlexAttention: max abs err" in out
    assert "einsumc (triton)" in out and "torch SDPA" in out.split("contender")[1]
    assert "FlexAttention" in out.split("contender")[1] and "device: cpu" in out
    density = float(out.split("mask density ")[1].split()[0])
    assert abs(density - sum(min(70, p + 21) for p in range(50)) / (50 * 70)) < 1e-6


def test_learnable_sink_gets_flex_with_an_epilogue(capsys):
    """The sink seeds the running state (s0, 1, 0): FlexAttention's log-sum-exp and an
    epilogue compute it (two launches, where einsumc needs one); SDPA cannot."""
    prog = einsumc.load(EX / "attention/learnable_sink_1pass.ein")
    pl = BL.plan(prog, {"B": 1, "H": 2, "M": 40, "P": 9, "E": 64, "F": 64, "M0": 16,
                        "M1": 3}, {"s0": 0.5})
    assert pl.state0 == (0.5, 1.0, 0.0)
    checks = BL.verify(prog, {"B": 1, "H": 2, "M": 70, "P": 50}, {"s0": 3.0}, torch)
    assert checks["FlexAttention"] is None and "log-sum-exp" in checks["torch SDPA"]
    assert _bench("attention/learnable_sink_1pass.ein", "B=1,H=1,M=40,P=9",
                  param="s0=0.5") == 0
    out = capsys.readouterr().out
    assert "an epilogue merges" in out and "vs FlexAttention: max abs err" in out


def test_bench_harness_times_alone_what_no_baseline_expresses(tmp_path, capsys):
    spec = tmp_path / "two.ein"
    spec.write_text("rank E = 8, M, P\ninput Q[e, p], K[e, m], V[e, m]\noutput O[e, p], D[p]\n"
                    "S[m, p] = Q[e, p] * K[e, m]\nX[p] = S[m, p] :: max(m)\n"
                    "N[m, p] = exp(S[m, p] - X[p])\nD[p] = N[m, p]\n"
                    "O[e, p] = N[m, p] * V[e, m] / D[p]\n")
    assert _bench(str(spec), "M=20,P=9") == 0
    out = capsys.readouterr().out
    assert "no baselines: 2 outputs" in out
    assert "torch SDPA" not in out.split("contender")[1]


_1P = (EX / "attention/mha_1pass.ein").read_text().replace("M0 = 256", "M0 = 4")
_1PC = _1P.replace("/ sqrt(E)", "/ sqrt(E) where m1*M0 + m0 <= p")
#: (spec, shapes, params, expected: "ok" = both baselines verified, else refused or failed)
ADVERSARIAL = [
    (_HDR + _QK + "S[b, h, m, p] = QK[b, h, m, p] where m <= p + h\n" + _TAIL, {}, "ok"),
    (_HDR + "QK[h, b, m, p] = Q[b, h, e, p] * K[b, h, e, m]\n"
     "S[h, b, m, p] = QK[h, b, m, p] where m <= p + h\n" + _TAIL.replace("b, h, m, p", "h, b, m, p"),
     {}, "ok"),
    (_HDR + "input Bi[m, p]\n" + _QK.replace("\n", " where m <= p\n")
     + "S[b, h, m, p] = QK[b, h, m, p] + Bi[m, p]\n" + _TAIL, {}, "refused"),
    (_HDR + _QK + "T[b, h, m, p] = QK[b, h, m, p] where m <= p\n"
     "U[b, h, m, p] = QK[b, h, m, p] * 0.5 where m >= p\n"
     "S[b, h, m, p] = T[b, h, m, p] + U[b, h, m, p]\n" + _TAIL, {}, "refused"),
    (_HDR + "input Bi[m, p]\n" + _QK + "S[b, h, m, p] = QK[b, h, m, p] + Bi[m - 1, p]\n" + _TAIL,
     {}, "refused"),
    (_HDR.replace("output", "param sc\noutput") + _S.replace("\n", " * sc\n") + _TAIL,
     {"sc": 0.5}, "ok"),
    (_HDR + "input sc[h]\n" + _S.replace("\n", " * sc[h]\n") + _TAIL, {}, "refused"),
    (_HDR + _S.replace("\n", " * (h + 1)\n") + _TAIL, {}, "refused"),
    (_HDR + _S + _TAIL.replace("GM[b, h, p])\n", "GM[b, h, p]) where m <= p\n"), {}, "refused"),
    (_HDR + _S + _TAIL.replace(" / SD[b, h, p]", ""), {}, "refused"),
    (_HDR + _S + _TAIL.replace("exp(S[b, h, m, p] - GM", "exp(2 * S[b, h, m, p] - GM"), {},
     "refused"),
    (_HDR + "S[b, h, m, p] = Q[b, h, e, P - 1 - p] * K[b, h, e, m]\n" + _TAIL, {}, "refused"),
    (_HDR + "KR[b, h, e, m] = K[b, h, e, M - 1 - m]\n"
     "S[b, h, m, p] = Q[b, h, e, p] * KR[b, h, e, m] where m <= p\n" + _TAIL, {}, "refused"),
    ("rank B, H, M, P, E = 8, F = 8\ninput Q[b, h, e, p], K[h, e, m], V[h, f, m]\n"
     "output O[b, h, f, p]\nS[b, h, m, p] = Q[b, h, e, p] * K[h, e, m]\n"
     + _TAIL.replace("V[b, h, f, m]", "V[h, f, m]"), {}, "ok"),  # K, V shared over b
    ("rank B, H, G, M, P, E = 8, F = 8\ninput Q[b, g, h, e, p], K[b, h, e, m], V[b, h, f, m]\n"
     "output O[b, g, h, f, p]\nS[b, g, h, m, p] = Q[b, g, h, e, p] * K[b, h, e, m]\n"
     "MX[b, g, h, p] = S[b, g, h, m, p] :: max(m)\n"
     "N[b, g, h, m, p] = exp(S[b, g, h, m, p] - MX[b, g, h, p])\nD[b, g, h, p] = N[b, g, h, m, p]\n"
     "O[b, g, h, f, p] = N[b, g, h, m, p] * V[b, h, f, m] / D[b, g, h, p]\n", {"G": 3}, "ok"),
    ("rank B, H, HQ, M, P, E = 8, F = 8\nrank G = HQ / H\n"
     "input Q[b, hq, e, p], K[b, h, e, m], V[b, h, f, m]\noutput O[b, h, g, f, p]\n"
     "S[b, h, g, m, p] = Q[b, g*H + h, e, p] * K[b, h, e, m]\n"
     "MX[b, h, g, p] = S[b, h, g, m, p] :: max(m)\n"
     "N[b, h, g, m, p] = exp(S[b, h, g, m, p] - MX[b, h, g, p])\nD[b, h, g, p] = N[b, h, g, m, p]\n"
     "O[b, h, g, f, p] = N[b, h, g, m, p] * V[b, h, f, m] / D[b, h, g, p]\n", {"HQ": 6}, "refused"),
    ("rank H, M, P, E = 8, F = 8\ninput Q[h, e, p], K[h, e, m], V[f, m]\noutput O[f, p]\n"
     "S[m, p] = Q[h, e, p] * K[h, e, m]\nGM[p] = S[m, p] :: max(m)\nSN[m, p] = exp(S[m, p] - GM[p])\n"
     "SD[p] = SN[m, p]\nO[f, p] = SN[m, p] * V[f, m] / SD[p]\n", {}, "refused"),
    (_HDR.replace("O[b, h, f, p]", "O[h, b, f, p]") + _S + _TAIL.replace("O[b, h, f, p]",
                                                                            "O[h, b, f, p]"),
     {}, "ok"),
    (_1PC, {}, "ok"),
    (_1P.replace("V[b, h, f, m1*M0 + m0]", "V[b, h, f, m0*M1 + m1]"), {}, "refused"),
    (_1PC.replace("K[b, h, e, m1*M0 + m0]", "K[b, h, e, m1*M0 + m0 + 1]")
     .replace("V[b, h, f, m1*M0 + m0]", "V[b, h, f, m1*M0 + m0 + 1]"), {}, "refused"),
]


@pytest.mark.parametrize("k", range(len(ADVERSARIAL)))
def test_no_wrong_baseline_is_accepted(k):
    """Specs a structural reading gets wrong (a masked score under `+`, a filter after the
    max, no normalization, reversed or offset indices, other head layouts): each baseline is
    either verified against NumPy or refused with a reason, never accepted wrong."""
    src, extra, expect = ADVERSARIAL[k]
    prog = einsumc.load(src)
    given = {"B": 2, "H": 3, "M": 12, "P": 10, **{k: v for k, v in extra.items()
                                                   if k.isupper()}}
    if "M0" in src:
        given = {"B": 1, "H": 2, "M": 16, "P": 10}
    given = {r: v for r, v in given.items() if any(x.name == r for x in prog.ranks)}
    params = {k: v for k, v in extra.items() if not k.isupper()}
    try:
        checks = BL.verify(prog, given, params, torch)
    except BL.Unavailable:
        checks = {"torch SDPA": "refused", "FlexAttention": "refused"}
    if expect == "ok":
        assert checks["FlexAttention"] is None, checks
    else:
        assert checks["FlexAttention"] and checks["torch SDPA"], checks


def test_mask_density_counts_every_head():
    src = _HDR + _S.replace("\n", " where m <= p - 3*h\n") + _TAIL
    prog = einsumc.load(src)
    ext = {"B": 2, "H": 3, "M": 12, "P": 10, "E": 8, "F": 8}
    pl = BL.plan(prog, ext, {})
    d = BL.mask_density(pl, {}, torch, 6, 10, 12, "cpu")
    want = sum(max(0, min(12, p - 3 * h + 1)) for _b in range(2) for h in range(3)
               for p in range(10)) / (6 * 10 * 12)
    assert abs(d - want) < 1e-12


def test_gpu_suite_wiring_on_the_cpu(tmp_path, capsys):
    """`python -m einsumc.backends.triton.suite` (the GPU suite), at toy sizes through the
    interpreter: every case measured and written as a Markdown row."""
    from einsumc.backends.triton import suite
    out = tmp_path / "r.md"
    assert suite.main(["--device", "cpu", "--tiny", "--only", "window,gqa", "--dtype", "f32",
                       "-o", str(out)]) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith("| window") or
            r.startswith("| gqa")]
    assert len(rows) == 2 and all("failed" not in r for r in rows)
    assert rows[0].split("|")[5].strip() != "-"  # einsumc measured
