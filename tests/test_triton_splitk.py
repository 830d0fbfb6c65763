"""Split-K decoding (flash-decoding) in the Triton backend, through Triton's interpreter.

When the rows of a launch are few (decoding: P = 1) and the programs too few for the key
length, the key loop is split across NSPLIT programs (launch axis 2); each stores its
partial online-softmax state to f32 scratch and a merge kernel combines them with the
associative merge, then runs the epilogue. These tests check it against the NumPy backend
(f32 tight, f16), with key lengths that are multiples of neither the tile nor the split,
filters (causal, window, sinks) that leave splits without a key, fully masked rows, a
non-trivial initial state (a learnable sink), that the split path is taken, that it is
only generated for a provable online softmax, and that its kernels AOT-compile.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from einsumc.backends.triton.lower import Config, Lowering, prepare
from einsumc.backends.triton.target import TritonInterpreterNotice, TritonTarget
from test_triton import DT, EX, TOL, _inputs

import einsumc


def _spec(name: str, old: str, new: str) -> str:
    text = (EX / "attention" / f"{name}.ein").read_text()
    assert old in text
    return text.replace(old, new)


#: decoding variants: P = 1 declared (constant rows) or bound at launch (symbolic rows)
GQA_DECODE = _spec("gqa", "rank B, H, G, M, P, E = 64, F = 64",
                   "rank B, H, G, M, P = 1, E = 64, F = 64")
WINDOW_DECODE = _spec("sliding_window", "rank B, H, M, P, E = 64, F = 64",
                      "rank B, H, M, P = 1, E = 64, F = 64")
SINKS_DECODE = _spec("sinks_window", "rank B, H, M, P, E = 64, F = 64, M0 = 8",
                     "rank B, H, M, P = 1, E = 64, F = 64, M0 = 8")


def _load(spec):
    return einsumc.load(EX / spec) if spec.endswith(".ein") else einsumc.load(spec)


def _check(prog, shapes, params, dtype, config=None, expect_split=None):
    ins = _inputs(prog, shapes, DT[dtype])
    ref = prog.compile("numpy")(**{k: v.float() for k, v in ins.items()}, **params)
    fn = TritonTarget().compile(prog, config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TritonInterpreterNotice)
        out = fn(**ins, **params)
    plan = dict(fn.module(True).LAST_LAUNCH)
    for k in ref:
        a = out[k].float().numpy()
        b = np.asarray(ref[k], dtype=np.float32)
        assert a.shape == b.shape and np.isfinite(a).all()
        err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
        assert err <= TOL[dtype], f"{k}: relative error {err:.3g} > {TOL[dtype]} ({plan})"
    if expect_split is not None:
        assert plan["kernel"] == "split" and plan["nsplit"] == expect_split, plan
    return out, ref, plan


#: (spec, shapes, params, NSPLIT the launcher picks): M is a multiple of neither the key
#: tile nor the split
CASES = [
    ("attention/decode.ein", dict(B=2, H=3, M=300, P=1), {}, 3),          # 19 tiles of 16
    ("attention/mha_1pass.ein", dict(B=1, H=2, M=700, P=1), {}, 3),       # 3 tiles x 4 sub-tiles
    ("attention/mha_causal_1pass.ein", dict(B=1, H=1, M=1000, P=3), {}, 4),  # 3 new tokens
    ("attention/learnable_sink_1pass.ein", dict(B=1, H=2, M=150, P=1), {"s0": 1.5}, 2),
    (GQA_DECODE, dict(B=1, H=2, G=3, M=530, P=1), {}, 2),                 # secondary rows
    (SINKS_DECODE, dict(B=1, H=2, M=301, P=1), {}, 8),                    # holes in the hull
]
IDS = ["decode", "mha_1pass", "causal_p3", "learnable_sink", "gqa_decode", "sinks_decode"]


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("spec,shapes,params,nsplit", CASES, ids=IDS)
def test_split_matches_numpy(spec, shapes, params, nsplit, dtype):
    _check(_load(spec), shapes, params, dtype, expect_split=nsplit)


def test_split_is_chosen_at_launch_without_recompiling():
    prog = _load("attention/decode.ein")
    fn = TritonTarget().compile(prog)
    mods, plans = set(), []
    for m in (40, 300, 1001):
        ins = _inputs(prog, dict(B=1, H=2, M=m, P=1), torch.float32, seed=m)
        ref = prog.compile("numpy")(**ins)["O"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TritonInterpreterNotice)
            out = fn(**ins)["O"]
        assert np.abs(out.numpy() - ref).max() < 2e-5
        mod = fn.module(True)
        mods.add(id(mod))
        plans.append(mod.LAST_LAUNCH["nsplit"])
    assert len(mods) == 1
    # 3 tiles: one program; 19 tiles: 4 of >= 4 tiles; 63 tiles: 8 (2 x 8 programs = 16)
    assert plans == [1, 4, 8]
    # NSPLIT is a kernel argument that Triton never specializes
    assert "@triton.jit(do_not_specialize=['n_B', 'n_H', 'n_M', 'n_M1', 'NSPLIT'])" in fn.source
    assert "def einsumc_kernel_split(" in fn.source and "def einsumc_merge(" in fn.source


@pytest.mark.parametrize("split", [1, 2, 7, 16])
def test_forced_splits_and_empty_splits(split):
    # 19 tiles in 16 splits: chunks of 2, so splits 10..15 see no key (m = -inf, d = 0)
    prog = _load("attention/decode.ein")
    _, _, plan = _check(prog, dict(B=1, H=1, M=300, P=1), {}, "f32",
                        config=Config(64, 4, 1, split=split))
    assert plan["nsplit"] == split and plan["kernel"] == ("main" if split == 1 else "split")


def test_window_decode_and_fully_masked_rows():
    prog = _load(WINDOW_DECODE)
    shapes = dict(B=1, H=2, M=300, P=1)
    # a window of 20 keys at the end: most of the 6 splits of the 5 tiles see no key
    _check(prog, shapes, {"W": 20}, "f32", config=Config(64, 4, 1, split=6), expect_split=5)
    _check(prog, shapes, {"W": 20}, "f16", config=Config(64, 4, 1, split=3), expect_split=3)
    # W = 0: no key at all, every split is empty, the output is 0 (as the NumPy backend's)
    out, ref, _ = _check(prog, shapes, {"W": 0}, "f32", config=Config(64, 4, 1, split=4),
                         expect_split=4)
    assert np.all(out["O"].numpy() == 0.0) and np.all(np.asarray(ref["O"]) == 0.0)


def test_only_for_provable_online_softmax():
    prog, how = prepare(_load("attention/decode.ein"))
    low = Lowering(prog, how)
    assert low.online_state() == ("RM", ["RD", "RNV"])
    assert low.split_k() is None
    # the same recurrences under other names: detected from their structure
    renamed = (EX / "attention/decode.ein").read_text()
    for a, b in (("RNV", "ACC"), ("RM", "BIG"), ("RD", "TOT")):
        renamed = renamed.replace(a, b)
    low = Lowering(*prepare(einsumc.load(renamed)))
    assert low.online_state() == ("BIG", ["TOT", "ACC"]) and low.split_k() is None
    # a running sum that is not rescaled by exp(RM[v] - RM[v+1]): no split path
    src = (EX / "attention/decode.ein").read_text().replace(
        "RD[b, h, m1+1, p]     = SLD[b, h, m1, p] + SPD[b, h, m1, p]",
        "RD[b, h, m1+1, p]     = SLD[b, h, m1, p] + RD[b, h, m1, p]")
    low = Lowering(einsumc.load(src), "as written")
    assert low.split_k() is not None
    text = TritonTarget().emit(einsumc.load(src))
    assert "einsumc_merge" not in text and "def einsumc_kernel(" in text
    # under an empty start (-inf), a sum that starts nonzero has no exact split
    src = (EX / "attention/decode.ein").read_text().replace(
        "RD[b, h, m1=0, p]     = 0", "RD[b, h, m1=0, p]     = 1")
    assert Lowering(einsumc.load(src), "as written").split_k() is not None


@pytest.mark.parametrize("arch", [80, 90])
def test_aot_split_kernels_no_spills(arch):
    from einsumc.backends.triton.aot import aot_report, aot_results
    prog = _load("attention/decode.ein")
    res = aot_results(prog, [arch], "f16", configs=[Config(64, 4, 2)])
    by = {r.kernel: r for r in res}
    assert set(by) == {"einsumc_kernel", "einsumc_kernel_split", "einsumc_merge"}
    for r in res:
        assert r.spills == 0 and r.smem_ok and r.regs is not None, r
    assert by["einsumc_kernel_split"].mma_dots == by["einsumc_kernel_split"].dots >= 2
    assert by["einsumc_merge"].dots == 0
    text = aot_report(prog, f"sm_{arch}", configs=[Config(64, 4, 2)])
    assert "einsumc_kernel_split" in text and "einsumc_merge" in text
    assert "all without spills" in text
