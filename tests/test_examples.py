"""Every example in ``examples/`` runs under the NumPy backend and matches a reference.

The references (``tests/reference.py``) are independent of ``einsumc``: torch SDPA in float64
where SDPA can express the variant, plain float64 NumPy otherwise. Inputs are float32, the
programs compute in float32, and outputs must match within rtol = atol = 1e-5.

Besides one reference check per example and shape, the suite checks that equivalent forms
agree (Cascades 1-3; Cascade 4, deferred division, 2-pass and Cascade 5; naive vs 1-pass),
that fully masked query rows give exactly 0 and never NaN, that shapes violating a declared
extent relation are rejected, and (hypothesis) that ``mha.ein`` matches SDPA on random shapes.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:  # tests/ as a package or as a rootdir on sys.path
    from . import reference as ref
except ImportError:
    import reference as ref

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RTOL = ATOL = 1e-5
S64 = 1.0 / math.sqrt(64)  # the 1/sqrt(E) scale of the E = 64 examples


# ----------------------------------------------------------------------------- helpers


@functools.cache
def compiled(example: str):
    """Load and compile ``examples/<example>`` once per session (numpy target)."""
    import einsumc

    return einsumc.load(str(EXAMPLES / example)).compile(target="numpy")


def run(example: str, **kwargs) -> dict[str, np.ndarray]:
    return compiled(example)(**kwargs)


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def qkv(rng, lead: tuple[int, ...], M: int, P: int, E: int = 64, F: int = 64, qscale: float = 1.0):
    """Q (*lead, E, P), K (*lead, E, M), V (*lead, F, M), float32."""
    return dict(
        Q=randn(rng, *lead, E, P, scale=qscale),
        K=randn(rng, *lead, E, M),
        V=randn(rng, *lead, F, M),
    )


def check(got, want, *, rtol: float = RTOL, atol: float = ATOL) -> None:
    """``got`` (the program's float32 output) matches the float64 reference ``want``."""
    got = np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    assert got.dtype == np.float32, f"dtype {got.dtype}, expected float32 (default f32)"
    assert np.isfinite(got).all(), "non-finite values in the output"
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol)


def dead_rows(P: int, M: int) -> np.ndarray:
    """Query rows that see no key under ``m <= p + M - P``: ``p < P - M``."""
    return ~ref.causal_allowed(P, M).any(axis=-1)


# -------------------------------------------------------------- one case per example/shape


@dataclass
class Case:
    example: str
    make: Callable[[np.random.Generator], dict]  # keyword arguments of the program
    expect: Callable[[dict], dict]  # reference outputs, from those arguments
    id: str = ""
    out: str = field(default="O")


def _mha_ref(scale=None, allowed=None):
    def expect(a):
        s = scale if scale is not None else 1.0 / math.sqrt(a["Q"].shape[-2])
        al = allowed(a) if allowed is not None else None
        return {"O": ref.attention(a["Q"], a["K"], a["V"], scale=s, allowed=al)}

    return expect


def _cases() -> list[Case]:
    cases: list[Case] = []

    # mha.ein: every extent symbolic (E and F too).
    for B, H, E, F, M, P in [(1, 1, 64, 64, 64, 64), (2, 3, 16, 8, 37, 29), (1, 2, 64, 64, 5, 11), (2, 1, 3, 5, 1, 1)]:
        cases.append(Case(
            "attention/mha.ein",
            lambda r, B=B, H=H, E=E, F=F, M=M, P=P: qkv(r, (B, H), M, P, E, F),
            _mha_ref(),
            f"B{B}H{H}E{E}F{F}M{M}P{P}",
        ))

    # mha_1pass.ein: M0 = 64, M1 = ceil(M / 64); M not a multiple of 64 included.
    for M, P, qs in [(37, 29, 1.0), (64, 1, 1.0), (100, 7, 1.0), (130, 13, 1.0), (130, 13, 4.0)]:
        cases.append(Case(
            "attention/mha_1pass.ein",
            lambda r, M=M, P=P, qs=qs: qkv(r, (2, 2), M, P, qscale=qs),
            _mha_ref(S64),
            f"M{M}P{P}q{qs}",
        ))

    # Causal forms, bottom-right aligned; P > M has fully masked rows.
    causal = lambda a: ref.causal_allowed(a["Q"].shape[-1], a["K"].shape[-1])  # noqa: E731
    for M, P in [(37, 37), (100, 13), (37, 50), (130, 29), (1, 3)]:
        cases.append(Case(
            "attention/mha_causal_1pass.ein",
            lambda r, M=M, P=P: qkv(r, (1, 2), M, P),
            _mha_ref(S64, causal),
            f"M{M}P{P}",
        ))
    for M, P in [(29, 29), (37, 13), (13, 37), (1, 1)]:
        cases.append(Case(
            "attention/causal.ein",
            lambda r, M=M, P=P: qkv(r, (2, 2), M, P),
            _mha_ref(S64, causal),
            f"M{M}P{P}",
        ))

    # mqa.ein: K, V have no head rank.
    for B, H, M, P in [(2, 3, 37, 29), (1, 4, 64, 1), (2, 1, 5, 11)]:
        def make(r, B=B, H=H, M=M, P=P):
            return dict(Q=randn(r, B, H, 64, P), K=randn(r, B, 64, M), V=randn(r, B, 64, M))

        def expect(a):
            return {"O": ref.attention(a["Q"], a["K"][:, None], a["V"][:, None], scale=S64)}

        cases.append(Case("attention/mqa.ein", make, expect, f"B{B}H{H}M{M}P{P}"))

    # gqa.ein: Q (B,H,G,E,P); K, V (B,H,.,M) shared by the G query heads; causal.
    for B, H, G, M, P in [(2, 2, 3, 29, 29), (1, 2, 2, 37, 13), (1, 1, 4, 13, 20), (2, 3, 1, 5, 5)]:
        def make(r, B=B, H=H, G=G, M=M, P=P):
            return dict(Q=randn(r, B, H, G, 64, P), K=randn(r, B, H, 64, M), V=randn(r, B, H, 64, M))

        def expect(a):
            P, M = a["Q"].shape[-1], a["K"].shape[-1]
            k, v = a["K"][:, :, None], a["V"][:, :, None]  # broadcast over g
            return {"O": ref.attention(a["Q"], k, v, scale=S64, allowed=ref.causal_allowed(P, M))}

        cases.append(Case("attention/gqa.ein", make, expect, f"B{B}H{H}G{G}M{M}P{P}"))

    # sqa.ein: flat Q (B,HQ,E,P), HKV <= HQ key/value heads, hq uses KV head hq // G;
    # reference through torch.repeat_interleave; output (B,HKV,G,F,P).
    for B, HKV, HQ, M, P in [(2, 2, 4, 37, 29), (1, 2, 2, 13, 13), (1, 1, 3, 20, 7), (2, 3, 6, 5, 9)]:
        def make(r, B=B, HKV=HKV, HQ=HQ, M=M, P=P):
            return dict(Q=randn(r, B, HQ, 64, P), K=randn(r, B, HKV, 64, M), V=randn(r, B, HKV, 64, M))

        def expect(a):
            import torch

            B, HQ, _, P = a["Q"].shape
            HKV = a["K"].shape[1]
            G = HQ // HKV
            k = torch.from_numpy(a["K"]).repeat_interleave(G, dim=1).numpy()
            v = torch.from_numpy(a["V"]).repeat_interleave(G, dim=1).numpy()
            o = ref.attention(a["Q"], k, v, scale=S64)  # (B, HQ, F, P)
            return {"O": o.reshape(B, HKV, G, o.shape[-2], P)}

        cases.append(Case("attention/sqa.ein", make, expect, f"B{B}HKV{HKV}HQ{HQ}M{M}P{P}"))

    # sliding_window.ein: run-time W.
    for W, M, P in [(1, 37, 37), (4, 37, 13), (16, 37, 37), (100, 13, 29), (3, 5, 11)]:
        def make(r, W=W, M=M, P=P):
            return dict(qkv(r, (1, 2), M, P), W=W)

        def expect(a):
            P, M = a["Q"].shape[-1], a["K"].shape[-1]
            al = ref.window_allowed(P, M, a["W"])
            return {"O": ref.attention(a["Q"], a["K"], a["V"], scale=S64, allowed=al)}

        cases.append(Case("attention/sliding_window.ein", make, expect, f"W{W}M{M}P{P}"))

    # sinks_window.ein: fixed S0 = 2, W = 8, tiles of M0 = 8 (middle tiles fully masked).
    for M, P in [(37, 37), (70, 29), (5, 9), (37, 50)]:
        def expect(a):
            P, M = a["Q"].shape[-1], a["K"].shape[-1]
            al = ref.sinks_window_allowed(P, M, W=8, S0=2)
            return {"O": ref.attention(a["Q"], a["K"], a["V"], scale=S64, allowed=al)}

        cases.append(Case(
            "attention/sinks_window.ein",
            lambda r, M=M, P=P: qkv(r, (1, 2), M, P),
            expect,
            f"M{M}P{P}",
        ))

    # alibi.ein: slope[h] input (geometric slopes, non-power-of-two H too); causal.
    for B, H, M, P in [(1, 4, 29, 29), (2, 5, 37, 13), (1, 3, 13, 20)]:
        def make(r, B=B, H=H, M=M, P=P):
            return dict(qkv(r, (B, H), M, P), slope=ref.alibi_slopes(H).astype(np.float32))

        def expect(a):
            P, M = a["Q"].shape[-1], a["K"].shape[-1]
            bias = ref.alibi_bias(a["slope"], P, M)  # (H, P, M), broadcast over b
            al = ref.causal_allowed(P, M)
            return {"O": ref.attention(a["Q"], a["K"], a["V"], scale=S64, allowed=al, bias=bias)}

        cases.append(Case("attention/alibi.ein", make, expect, f"B{B}H{H}M{M}P{P}"))

    # softcap.ein: run-time cap; Q scaled up so that the cap bites.
    for cap, M, P in [(1.0, 37, 29), (5.0, 13, 13), (50.0, 37, 29), (5.0, 1, 4)]:
        def make(r, cap=cap, M=M, P=P):
            return dict(qkv(r, (2, 2), M, P, qscale=3.0), cap=cap)

        def expect(a):
            return {"O": ref.softcap_attention(a["Q"], a["K"], a["V"], scale=S64, cap=a["cap"])}

        cases.append(Case("attention/softcap.ein", make, expect, f"cap{cap}M{M}P{P}"))

    # cross_attention.ein: M != P, F symbolic.
    for F, M, P in [(64, 50, 7), (48, 13, 40), (8, 1, 3)]:
        cases.append(Case(
            "attention/cross_attention.ein",
            lambda r, F=F, M=M, P=P: qkv(r, (2, 2), M, P, F=F),
            _mha_ref(S64),
            f"F{F}M{M}P{P}",
        ))

    # decode.ein: P = 1; M0 = 16, M1 = ceil(M / 16).
    for M in [1, 16, 37, 100]:
        cases.append(Case(
            "attention/decode.ein",
            lambda r, M=M: qkv(r, (2, 3), M, 1),
            _mha_ref(S64),
            f"M{M}",
        ))

    # linear_attention.ein: elu+1 feature map; quadratic-form reference.
    for M, P in [(37, 29), (1, 5), (64, 64)]:
        cases.append(Case(
            "attention/linear_attention.ein",
            lambda r, M=M, P=P: qkv(r, (2, 2), M, P),
            lambda a: {"O": ref.linear_attention(a["Q"], a["K"], a["V"])},
            f"M{M}P{P}",
        ))

    # learnable_sink_1pass.ein: run-time sink logit s0 = an extra key with logit s0, value 0.
    for s0, M, P in [(-2.0, 37, 29), (0.0, 64, 5), (1.5, 5, 1), (8.0, 37, 29)]:
        def make(r, s0=s0, M=M, P=P):
            return dict(qkv(r, (2, 2), M, P), s0=s0)

        def expect(a):
            return {"O": ref.sink_attention(a["Q"], a["K"], a["V"], scale=S64, s0=a["s0"])}

        cases.append(Case("attention/learnable_sink_1pass.ein", make, expect, f"s0{s0}M{M}P{P}"))

    return cases


CASES = _cases()


def test_every_example_has_a_case():
    """No example file is left out of the reference checks."""
    covered = {c.example for c in CASES} | {f"fusemax/{n}" for n in FUSEMAX_SOFTMAX + FUSEMAX_SCALAR}
    on_disk = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.ein")}
    assert on_disk - covered == set(), f"examples without a test: {sorted(on_disk - covered)}"


@pytest.mark.parametrize("case", CASES, ids=[f"{Path(c.example).stem}-{c.id}" for c in CASES])
def test_example_matches_reference(case: Case):
    rng = np.random.default_rng(zlib.crc32(f"{case.example}:{case.id}".encode()))
    args = case.make(rng)
    got = run(case.example, **args)
    for name, want in case.expect(args).items():
        check(got[name], want)


# --------------------------------------------------------------- FuseMax Cascades 1, 2, 3

FUSEMAX_SCALAR = ["cascade1.ein", "cascade2.ein", "cascade3.ein"]


@pytest.mark.parametrize("K", [1, 2, 7, 37])
def test_cascades_1_2_3_agree(K):
    """Z = (sum A*B) * (sum A) in all three forms (Cascade 3 divides by RY: positive inputs)."""
    rng = np.random.default_rng(K)
    a = rng.uniform(0.5, 1.5, K).astype(np.float32)
    b = rng.uniform(0.5, 1.5, K).astype(np.float32)
    want = ref.cascade_z(a, b)
    outs = {}
    for name in FUSEMAX_SCALAR:
        z = run(f"fusemax/{name}", A=a, B=b)["Z"]
        assert np.asarray(z).shape == (), f"{name}: scalar output must be a 0-d array"
        check(z, want)
        outs[name] = np.asarray(z, np.float64)
    for name in FUSEMAX_SCALAR[1:]:
        np.testing.assert_allclose(outs[name], outs[FUSEMAX_SCALAR[0]], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["cascade1.ein", "cascade2.ein"])
def test_cascades_1_2_signed(name):
    """Cascades 1 and 2 do not divide: any signs (tolerance scaled to the magnitudes)."""
    rng = np.random.default_rng(5)
    a, b = randn(rng, 23), randn(rng, 23)
    want = ref.cascade_z(a, b)
    scale = float(np.abs(a * b).sum() * np.abs(a).sum())
    check(run(f"fusemax/{name}", A=a, B=b)["Z"], want, atol=1e-6 * scale)


# ------------------------------------ FuseMax Cascade 4, deferred division, 2-pass, Cascade 5

FUSEMAX_SOFTMAX = ["cascade4_3pass.ein", "deferred_division.ein", "two_pass.ein", "cascade5_1pass.ein"]


def _softmax_forms(q, k, v) -> dict[str, np.ndarray]:
    """All four forms on the same inputs. Cascade 5 is unscaled (as in the paper and the
    contract), so it gets Q / sqrt(E) = Q / 8, which is exact in floating point."""
    outs = {}
    for name in FUSEMAX_SOFTMAX:
        qq = q / np.float32(8) if name == "cascade5_1pass.ein" else q
        outs[name] = run(f"fusemax/{name}", Q=qq, K=k, V=v)["AV"]
    return outs


@pytest.mark.parametrize("M,P", [(64, 1), (128, 5), (192, 13), (64, 64)])
def test_softmax_cascades_agree(M, P):
    """Cascades 4 and 5, the 2-pass reconstruction and deferred division: same softmax(QK/8)V.
    M is a multiple of 64 (Cascade 5's M0) and of 16 (two_pass's M0)."""
    rng = np.random.default_rng(M * 1000 + P)
    q, k, v = randn(rng, 64, P, scale=2.0), randn(rng, 64, M), randn(rng, 64, M)
    want = ref.attention(q, k, v, scale=S64)
    outs = _softmax_forms(q, k, v)
    for name, got in outs.items():
        check(got, want)
    base = outs[FUSEMAX_SOFTMAX[0]].astype(np.float64)
    for name in FUSEMAX_SOFTMAX[1:]:
        np.testing.assert_allclose(outs[name], base, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("name", ["cascade4_3pass.ein", "deferred_division.ein"])
@pytest.mark.parametrize("M,P", [(37, 29), (1, 3)])
def test_unpartitioned_cascades_any_M(name, M, P):
    rng = np.random.default_rng(M + P)
    q, k, v = randn(rng, 64, P), randn(rng, 64, M), randn(rng, 64, M)
    check(run(f"fusemax/{name}", Q=q, K=k, V=v)["AV"], ref.attention(q, k, v, scale=S64))


@pytest.mark.parametrize("name,M", [("cascade5_1pass.ein", 100), ("two_pass.ein", 40)])
def test_partitioned_rejects_indivisible_M(name, M):
    """`rank M1 = M / M0` with M not a multiple of M0 is a clear error, not a wrong answer."""
    import einsumc

    rng = np.random.default_rng(0)
    q, k, v = randn(rng, 64, 3), randn(rng, 64, M), randn(rng, 64, M)
    with pytest.raises((einsumc.EinsumcError, ValueError)):
        run(f"fusemax/{name}", Q=q, K=k, V=v)


def test_fixed_extent_mismatch_is_an_error():
    """E = 64 is fixed in mha_1pass.ein: an input with E = 32 is rejected."""
    import einsumc

    rng = np.random.default_rng(0)
    args = qkv(rng, (1, 1), 8, 8, E=32)
    with pytest.raises((einsumc.EinsumcError, ValueError)):
        run("attention/mha_1pass.ein", **args)


# ------------------------------------------------------------- naive vs 1-pass forms agree


@pytest.mark.parametrize("M,P", [(37, 29), (130, 13), (5, 11)])
def test_one_pass_forms_match_naive(M, P):
    """mha_1pass == mha; mha_causal_1pass == causal; learnable sink with s0 -> -big == mha."""
    rng = np.random.default_rng(7 * M + P)
    args = qkv(rng, (2, 2), M, P)
    naive = run("attention/mha.ein", **args)["O"].astype(np.float64)
    np.testing.assert_allclose(run("attention/mha_1pass.ein", **args)["O"], naive, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        run("attention/learnable_sink_1pass.ein", **args, s0=-1.0e4)["O"], naive, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        run("attention/mha_causal_1pass.ein", **args)["O"],
        run("attention/causal.ein", **args)["O"],
        rtol=RTOL,
        atol=ATOL,
    )


def test_decode_matches_mha():
    rng = np.random.default_rng(11)
    args = qkv(rng, (2, 3), 45, 1)
    np.testing.assert_allclose(
        run("attention/decode.ein", **args)["O"], run("attention/mha.ein", **args)["O"], rtol=RTOL, atol=ATOL
    )


# ------------------------------------------------------------------ fully masked query rows

MASKED = [
    ("attention/causal.ein", {}),
    ("attention/mha_causal_1pass.ein", {}),
    ("attention/sliding_window.ein", {"W": 3}),
    ("attention/sinks_window.ein", {}),
    ("attention/alibi.ein", {"slope": ref.alibi_slopes(2).astype(np.float32)}),
]


@pytest.mark.parametrize("M,P", [(5, 11), (37, 45), (1, 70), (130, 140)])
@pytest.mark.parametrize("example,extra", MASKED, ids=[Path(e).stem for e, _ in MASKED])
def test_fully_masked_rows_are_zero(example, extra, M, P):
    """Under `m <= p + M - P` the rows p < P - M see no key: exactly 0, no NaN anywhere,
    and the other rows still match the reference."""
    rng = np.random.default_rng(M * P)
    args = dict(qkv(rng, (1, 2), M, P), **extra)
    o = np.asarray(run(example, **args)["O"])
    assert not np.isnan(o).any()
    dead = dead_rows(P, M)
    assert dead.sum() == P - M
    assert (o[..., dead] == 0).all(), "fully masked rows must be exactly 0"
    case = next(c for c in CASES if c.example == example)
    check(o, case.expect(args)["O"])


@pytest.mark.parametrize("M,P", [(5, 11), (37, 45)])
def test_fully_masked_rows_are_zero_gqa(M, P):
    rng = np.random.default_rng(M + 3 * P)
    args = dict(Q=randn(rng, 1, 2, 2, 64, P), K=randn(rng, 1, 2, 64, M), V=randn(rng, 1, 2, 64, M))
    o = np.asarray(run("attention/gqa.ein", **args)["O"])
    assert not np.isnan(o).any()
    assert (o[..., dead_rows(P, M)] == 0).all()


# ----------------------------------------------------------------------- learnable sink


@pytest.mark.parametrize("s0", [-5.0, -0.5, 0.0, 2.0, 6.0])
def test_learnable_sink_is_an_extra_key(s0):
    """The sink-initialised running state equals softmax with one extra key (logit s0, value 0)."""
    rng = np.random.default_rng(int((s0 + 10) * 10))
    args = qkv(rng, (1, 2), 37, 9)
    got = run("attention/learnable_sink_1pass.ein", **args, s0=s0)["O"]
    check(got, ref.sink_attention(args["Q"], args["K"], args["V"], scale=S64, s0=s0))
    check(got, ref.sink_attention_np(args["Q"], args["K"], args["V"], scale=S64, s0=s0))


# ------------------------------------------------------------------------ property test


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    E=st.sampled_from([1, 2, 3, 8, 17, 64]),
    F=st.integers(1, 9),
    M=st.integers(1, 40),
    P=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_mha_matches_sdpa_property(B, H, E, F, M, P, seed):
    rng = np.random.default_rng(seed)
    args = qkv(rng, (B, H), M, P, E, F)
    got = run("attention/mha.ein", **args)["O"]
    check(got, ref.attention(args["Q"], args["K"], args["V"], scale=1.0 / math.sqrt(E)))


# ------------------------------------------------------------ the references themselves


@pytest.mark.parametrize("M,P", [(7, 7), (13, 5), (5, 13)])
def test_references_agree_with_each_other(M, P):
    """SDPA path vs NumPy path (masks, bias, sink), linear attention's two associations,
    soft-capping with a huge cap vs plain attention. Runs without einsumc."""
    rng = np.random.default_rng(M * 31 + P)
    q, k, v = randn(rng, 2, 3, 16, P), randn(rng, 2, 3, 16, M), randn(rng, 2, 3, 8, M)
    masks = [None, ref.causal_allowed(P, M), ref.window_allowed(P, M, 3), ref.sinks_window_allowed(P, M, 3, 2)]
    for al in masks:
        a = ref.attention(q, k, v, scale=0.25, allowed=al)
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, ref.attention_np(q, k, v, scale=0.25, allowed=al), rtol=1e-12, atol=1e-12)
        if al is not None:
            assert (a[..., ~al.any(-1)] == 0).all()
    bias = ref.alibi_bias(ref.alibi_slopes(3), P, M)
    al = ref.causal_allowed(P, M)
    np.testing.assert_allclose(
        ref.attention(q, k, v, scale=0.25, allowed=al, bias=bias),
        ref.attention_np(q, k, v, scale=0.25, allowed=al, bias=bias),
        rtol=1e-12,
        atol=1e-12,
    )
    for s0 in [-3.0, 0.0, 2.5, 40.0]:
        np.testing.assert_allclose(
            ref.sink_attention(q, k, v, scale=0.25, s0=s0),
            ref.sink_attention_np(q, k, v, scale=0.25, s0=s0),
            rtol=1e-12,
            atol=1e-12,
        )
    np.testing.assert_allclose(ref.linear_attention(q, k, v), ref.linear_attention_assoc(q, k, v), rtol=1e-12)
    np.testing.assert_allclose(
        ref.softcap_attention(q, k, v, scale=0.25, cap=1e7), ref.attention(q, k, v, scale=0.25), rtol=1e-9, atol=1e-9
    )
