"""The Triton backend's multi-kernel path (backends/triton/multipass.py), through Triton's
interpreter on the CPU against the NumPy backend, and compiled ahead of time for sm_90.

Cascades that keep several passes as written (`two_pass.ein`, `cascade4_3pass.ein` with
`Config(opt=False)`) or have no loop at all (`cascade1.ein`, `cascade2.ein`,
`linear_attention.ein`) run as one kernel per fusion group of
`einsumc.transforms.fusion.kernels`, with the tensors that cross groups in f32 scratch.
Cascades with `where` filters (`causal.ein`, `sliding_window.ein`, `alibi.ein` as written)
run there too, with absent points tracked exactly (presence masks next to the scratch).
Shapes are tiny and ragged (not multiples of the 64-lane blocks).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import einsumc  # noqa: E402
from einsumc import EinsumcError  # noqa: E402
from einsumc.backends.triton.lower import Config  # noqa: E402
from einsumc.backends.triton.target import TritonInterpreterNotice, TritonTarget  # noqa: E402
from einsumc.transforms.fusion import kernels as fusion_kernels  # noqa: E402

EX = Path(__file__).resolve().parent.parent / "examples"
AS_WRITTEN = Config(opt=False)

#: (spec, shapes, config): config None = the default (multi-kernel only because --opt
#: finds no one-loop form)
CASES = [
    ("fusemax/two_pass.ein", dict(M=96, P=70), AS_WRITTEN),
    ("fusemax/two_pass.ein", dict(M=32, P=5), None),
    ("fusemax/cascade4_3pass.ein", dict(M=100, P=70), AS_WRITTEN),
    ("fusemax/cascade4_3pass.ein", dict(M=17, P=96), AS_WRITTEN),
    ("fusemax/cascade1.ein", dict(K=77), None),
    ("fusemax/cascade1.ein", dict(K=1), None),
    ("fusemax/cascade2.ein", dict(K=130), None),
    ("attention/linear_attention.ein", dict(B=2, H=2, M=50, P=37), None),
    ("attention/linear_attention.ein", dict(B=1, H=1, M=90, P=3), None),
]
TOL = {torch.float32: 2e-5, torch.float16: 3e-3}


def _inputs(prog, shapes, dtype, seed=0, transpose=False):
    from einsumc.ir.symbolic import evaluate
    ext = dict(shapes)
    for r in prog.ranks:
        if r.extent is not None and r.name not in ext:
            ext[r.name] = int(evaluate(r.extent, ext, {}))
    g = torch.Generator().manual_seed(seed)
    out = {}
    for d in prog.inputs:
        shape = [ext[prog.rank_of_var(v).name] for v in d.indices]
        x = torch.randn(*shape, generator=g)
        if transpose and x.dim() >= 2:  # the same values, other strides
            x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        out[d.name] = x.to(dtype)
    return out


def _run(prog, ins, config):
    fn = TritonTarget().compile(prog, config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TritonInterpreterNotice)
        return fn, fn(**ins)


def _check(prog, ins, out, tol):
    ref = prog.compile("numpy")(**{k: v.float().numpy() for k, v in ins.items()})
    assert set(out) == set(ref)
    for k in ref:
        a = out[k].float().numpy()
        b = np.asarray(ref[k], dtype=np.float32)
        assert a.shape == b.shape
        err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
        assert err <= tol, f"{k}: relative error {err:.3g} > {tol}"


def _ngroups(prog):
    """Fusion groups with a statement other than a view of an input (views are inlined)."""
    ins = {d.name for d in prog.inputs}
    es = prog.einsums

    def view(e):
        return not e.reduced and isinstance(e.rhs, einsumc.ir.nodes.Access) and e.rhs.tensor in ins
    return sum(1 for g in fusion_kernels(prog) if not all(view(es[i]) for i in g))


@pytest.mark.parametrize("spec,shapes,config", CASES, ids=[
    f"{c[0].split('/')[1][:-4]}-{'x'.join(str(v) for v in c[1].values())}"
    f"{'-as-written' if c[2] is not None else ''}" for c in CASES])
def test_multi_kernel_matches_numpy_f32(spec, shapes, config):
    prog = einsumc.load(EX / spec)
    ins = _inputs(prog, shapes, torch.float32)
    fn, out = _run(prog, ins, config)
    _check(prog, ins, out, TOL[torch.float32])
    mod = fn.module(True)
    assert "multi-kernel path" in fn.source
    launched = [k for k, _grid in mod.LAST_LAUNCH["kernels"]]
    assert launched == [f"einsumc_kernel_g{i}" for i in range(len(launched))]
    assert len(launched) == _ngroups(prog)


def test_group_structure_follows_the_fusion_groups():
    two = TritonTarget().compile(einsumc.load(EX / "fusemax/two_pass.ein"), config=AS_WRITTEN)
    # pass 1 (BQK .. GD) and pass 2 (A, AV); SLN, PRM and GD cross in scratch
    assert "einsumc_kernel_g0: BQK, LM, SLN, SLD, GM, PRM, GD" in two.source
    assert "einsumc_kernel_g1: AV" in two.source
    assert "Materialized in f32 scratch between kernels: SLN, PRM, GD" in two.source
    c4 = TritonTarget().compile(einsumc.load(EX / "fusemax/cascade4_3pass.ein"),
                                config=AS_WRITTEN)
    assert "def einsumc_kernel_g2(" in c4.source and "def einsumc_kernel_g3(" not in c4.source
    # the non-recurrent reductions over a loop rank are loop-carried accumulators
    assert "tl.maximum(acc" in two.source and "_ein_dot(" in two.source


def test_default_keeps_the_one_loop_path_when_opt_applies():
    prog = einsumc.load(EX / "fusemax/cascade4_3pass.ein")
    fn = TritonTarget().compile(prog)
    assert "multi-kernel" not in fn.source and "def einsumc_kernel(" in fn.source


def test_f16_and_other_strides():
    prog = einsumc.load(EX / "fusemax/two_pass.ein")
    ins = _inputs(prog, dict(M=48, P=33), torch.float16, seed=3, transpose=True)
    assert ins["Q"].stride(0) == 1
    _fn, out = _run(prog, ins, AS_WRITTEN)
    assert out["AV"].dtype == torch.float32  # the declared dtype
    _check(prog, ins, out, TOL[torch.float16])


def test_launch_errors_and_refusals():
    prog = einsumc.load(EX / "fusemax/two_pass.ein")
    ins = _inputs(prog, dict(M=32, P=4), torch.float32)
    ins["K"] = ins["K"][:, :30]
    ins["V"] = ins["V"][:, :30]
    with pytest.raises(EinsumcError, match="not an integer"):
        _run(prog, ins, AS_WRITTEN)
    # a read out of bounds (an absent point by index) is not built on this path: refused
    # at launch, saying why
    shifted = einsumc.load("rank N, D = 8\ninput X[n, d]\noutput Y[d]\nY[d] = X[n + D, d]\n")
    with pytest.raises(EinsumcError, match="out of bounds"):
        _run(shifted, {"X": torch.randn(10, 8)}, AS_WRITTEN)


def test_aot_two_pass_sm90_f16_no_spills():
    pytest.importorskip("triton.backends.nvidia.compiler")
    from einsumc.backends.triton.multipass import aot_multipass
    try:
        res = aot_multipass(einsumc.load(EX / "fusemax/two_pass.ein"), 90, "f16")
    except EinsumcError as exc:  # pragma: no cover - no ptxas in this installation
        if "ptxas" in str(exc):
            pytest.skip(str(exc))
        raise
    assert [r["kernel"] for r in res] == ["einsumc_kernel_g0", "einsumc_kernel_g1"]
    for r in res:
        assert r["spills"] == 0, r
        assert r["dots"] >= 1, r


def test_generic_reductions_and_program_grid():
    """Not tied to attention: min and max reductions, a sum over a loop rank of a
    broadcast, a group with per-coordinate programs and two outputs."""
    prog = einsumc.load("rank B, N, D = 8\ninput X[b, n, d]\noutput Y[b, d], Z[b]\n"
                        "S[b, d] = X[b, n, d] :: min(n)\n"
                        "Y[b, d] = S[b, d] - X[b, n, d] / N\n"
                        "Z[b] = Y[b, d] * Y[b, d] :: max(d)\n")
    ins = {"X": torch.randn(3, 21, 8, generator=torch.Generator().manual_seed(1))}
    fn, out = _run(prog, ins, None)
    _check(prog, ins, out, TOL[torch.float32])
    assert "programs per b" in fn.source


def test_as_written_does_not_change_a_one_loop_cascade():
    prog = einsumc.load(EX / "fusemax/cascade5_1pass.ein")
    fn = TritonTarget().compile(prog, config=AS_WRITTEN)
    assert "multi-kernel" not in fn.source


#: (spec, shapes, params): filtered cascades as written; P > M leaves P - M fully masked rows
FILTERED = [
    ("attention/causal.ein", dict(B=1, H=2, M=19, P=37), {}),
    ("attention/causal.ein", dict(B=2, H=1, M=70, P=5), {}),
    ("attention/sliding_window.ein", dict(B=1, H=2, M=23, P=41), dict(W=5)),
    ("attention/sliding_window.ein", dict(B=1, H=1, M=90, P=7), dict(W=70)),
    ("attention/alibi.ein", dict(B=1, H=2, M=9, P=20), {}),
]


@pytest.mark.parametrize("spec,shapes,params", FILTERED, ids=[
    f"{c[0].split('/')[1][:-4]}-{'x'.join(str(v) for v in c[1].values())}"
    + "".join(f"-{k}{v}" for k, v in c[2].items()) for c in FILTERED])
def test_filtered_cascades_as_written_match_numpy_f32(spec, shapes, params):
    prog = einsumc.load(EX / spec)
    ins = _inputs(prog, shapes, torch.float32)
    fn = TritonTarget().compile(prog, config=AS_WRITTEN)
    assert "multi-kernel path" in fn.source and "int8 presence mask" in fn.source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TritonInterpreterNotice)
        out = fn(**ins, **params)
    ref = prog.compile("numpy")(**{k: v.numpy() for k, v in ins.items()}, **params)
    a, b = out["O"].numpy(), np.asarray(ref["O"], dtype=np.float32)
    assert not np.isnan(a).any()
    err = np.abs(a - b).max() / max(1.0, np.abs(b).max())
    assert err <= TOL[torch.float32], f"relative error {err:.3g}"
    masked = max(0, shapes["P"] - shapes["M"])  # rows that see no key read exactly 0
    assert (a[..., :masked] == 0).all()
    assert (np.abs(a[..., masked:]).max(axis=2) > 0).all()


def test_absent_point_rules_unions_and_filters_over_reduced_ranks():
    """A filter over the reduced rank (per point), a filtered map crossing groups, `+` and
    max(a, b) as unions, `*` as an intersection, fully absent columns reading 0."""
    prog = einsumc.load("rank N, D = 8\ninput X[n, d], Y[n, d]\noutput Z[d], U[n, d], V[d]\n"
                        "S[d] = X[n, d] :: max(n) where n < d\n"
                        "T[n, d] = Y[n, d] where n > d + 2 and n % 3 != 1\n"
                        "U[n, d] = T[n, d] + S[d]\n"
                        "Z[d] = T[n, d] * S[d]\n"
                        "V[d] = max(S[d], T[n, d] * 2) :: min(n) where n != 5\n")
    g = torch.Generator().manual_seed(2)
    for n in (21, 3):
        ins = {"X": torch.randn(n, 8, generator=g), "Y": torch.randn(n, 8, generator=g)}
        fn, out = _run(prog, ins, AS_WRITTEN)
        assert "presence mask (they can be absent): S, T" in fn.source
        _check(prog, ins, out, TOL[torch.float32])
        assert out["Z"][0] == 0 and not out["U"].isnan().any()  # S[0] is absent


def test_minus_inf_minus_minus_inf_is_minus_inf():
    """Absent-point rule 5 on the multi-kernel path: a present -inf minus a present -inf is
    -inf, so a row whose scores are all -inf (an additive -inf mask) gives
    exp(-inf - -inf) = 0 and an output of 0, never NaN."""
    prog = einsumc.load("rank E = 8, F = 8\nrank M, P\n"
                        "input Q[e, p], K[e, m], V[f, m], B[m, p]\noutput AV[f, p]\n"
                        "QK[m, p] = Q[e, p] * K[e, m]\n"
                        "S[m, p] = QK[m, p] + B[m, p]\n"
                        "GM[p] = S[m, p] :: max(m)\n"
                        "SN[m, p] = exp(S[m, p] - GM[p])\n"
                        "SD[p] = SN[m, p]\n"
                        "A[m, p] = SN[m, p] / SD[p]\n"
                        "AV[f, p] = A[m, p] * V[f, m]\n")
    g = torch.Generator().manual_seed(5)
    m, p = 37, 11
    ins = {"Q": torch.randn(8, p, generator=g), "K": torch.randn(8, m, generator=g),
           "V": torch.randn(8, m, generator=g), "B": torch.zeros(m, p)}
    ins["B"][:, 3] = float("-inf")           # a fully -inf column: GM is -inf there
    ins["B"][::4, 5] = float("-inf")         # scattered -inf scores
    fn, out = _run(prog, ins, AS_WRITTEN)
    assert "_ein_sub(" in fn.source
    assert not out["AV"].isnan().any()
    assert (out["AV"][:, 3] == 0).all()
    _check(prog, ins, out, TOL[torch.float32])


def test_minus_inf_literal_minus_minus_inf_is_minus_inf():
    prog = einsumc.load("rank M, P\ninput A[m, p]\noutput Y[p]\n"
                        "T[m, p] = exp(-inf - A[m, p])\nY[p] = T[m, p]\n")
    a = torch.randn(5, 3)
    a[:, 0] = float("-inf")
    fn, out = _run(prog, {"A": a}, AS_WRITTEN)
    assert "_ein_sub(" in fn.source and out["Y"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("spec,n", [("causal", 3), ("sliding_window", 2)])
def test_aot_filtered_as_written_sm90_f16_no_spills(spec, n):
    pytest.importorskip("triton.backends.nvidia.compiler")
    from einsumc.backends.triton.multipass import aot_multipass
    try:
        res = aot_multipass(einsumc.load(EX / f"attention/{spec}.ein"), 90, "f16")
    except EinsumcError as exc:  # pragma: no cover - no ptxas in this installation
        if "ptxas" in str(exc):
            pytest.skip(str(exc))
        raise
    assert len(res) == n and all(r["spills"] == 0 for r in res), res


def test_filtered_loops_skip_blocks_and_never_read_unwritten_scratch(monkeypatch):
    """A filtered statement's loop runs only over the key blocks its filter admits for the
    program's rows; what it skips is absent (presence scratch starts at 0), so scratch
    values it never wrote (NaN here) are never used."""
    prog = einsumc.load(EX / "attention/sliding_window.ein")
    ins = _inputs(prog, dict(B=1, H=1, M=200, P=130), torch.float32)
    fn = TritonTarget().compile(prog, config=Config(opt=False, block_r=16))
    assert "for s_i_m_blk in range((tl.maximum(" in fn.source
    empty = torch.empty

    def nan_empty(*a, **k):
        x = empty(*a, **k)
        return x.fill_(float("nan")) if x.dtype.is_floating_point else x.fill_(77)
    monkeypatch.setattr(torch, "empty", nan_empty)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TritonInterpreterNotice)
        out = fn(**ins, W=7)
    ref = prog.compile("numpy")(**{k: v.numpy() for k, v in ins.items()}, W=7)
    a = out["O"].numpy()
    assert not np.isnan(a).any()
    assert np.abs(a - ref["O"]).max() <= TOL[torch.float32] * max(1.0, np.abs(ref["O"]).max())
