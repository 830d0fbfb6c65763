"""The absent-point rules of the language contract, one by one, on the NumPy backend."""
from __future__ import annotations

import numpy as np
import pytest

import einsumc


def run(src, **inputs):
    return einsumc.load(src).compile()(**inputs)


def test_filtered_point_is_absent_and_reads_zero():
    out = run("rank M, P\ninput A[m, p]\noutput Z[m, p]\nZ[m, p] = A[m, p] + 1 where m <= p\n",
              A=np.ones((3, 3), np.float32))
    assert np.array_equal(out["Z"], np.triu(np.full((3, 3), 2.0)))  # rule 1 and 6


def test_reduction_of_no_present_point_is_absent():
    # GM[p] of a fully masked row is absent: exp(QK - GM) is absent too, the row sums to 0
    src = """rank M, P
input S[m, p]
output GM[p], D[p]
QK[m, p] = S[m, p] where m < p
GM[p] = QK[m, p] :: max(m)
D[p] = exp(QK[m, p] - GM[p])
"""
    s = np.zeros((4, 4), np.float32)
    out = run(src, S=s)
    assert out["GM"][0] == 0 and out["D"][0] == 0  # p = 0 has no m < 0
    assert np.allclose(out["D"][1:], [1, 2, 3])


def test_union_keeps_the_present_operand():
    src = """rank M
input A[m], B[m]
output X[m], Y[m], Z[m]
AM[m] = A[m] where m < 2
X[m] = AM[m] + B[m]
Y[m] = max(AM[m], B[m])
Z[m] = AM[m] * B[m]
"""
    a = np.array([5, 5, 5, 5], np.float32)
    b = np.array([1, 1, 1, 1], np.float32)
    prog = einsumc.load(src)
    assert any("masked by a `where` filter" in w.message for w in prog.warnings)
    out = prog.compile()(A=a, B=b)
    assert out["X"].tolist() == [6, 6, 1, 1]   # rule 3: + is a union
    assert out["Y"].tolist() == [5, 5, 1, 1]   # max(a, b) is a union
    assert out["Z"].tolist() == [5, 5, 0, 0]   # * is an intersection (absent reads 0)


def test_division_by_zero_is_zero():
    out = run("rank M\ninput A[m], B[m]\noutput Z[m]\nZ[m] = A[m] / B[m]\n",
              A=np.array([1, 0, 3], np.float32), B=np.array([0, 0, 2], np.float32))
    assert out["Z"].tolist() == [0, 0, 1.5]  # rule 4


def test_minus_inf_minus_minus_inf():
    out = run("rank M\ninput A[m]\noutput Z[m], D[m]\nZ[m] = exp(A[m] - A[m])\nD[m] = A[m] - A[m]\n",
              A=np.array([-np.inf, 2.0], np.float32))
    assert out["Z"].tolist() == [0, 1]  # rule 5: exp(-inf - -inf) = exp(-inf) = 0
    assert out["D"][0] == -np.inf


def test_out_of_range_access_is_absent():
    src = """rank M, M0 = 4
rank M1 = ceil(M / M0)
input A[m]
output S[m1], C[m1]
B[m1, m0] = A[m1*M0 + m0]
S[m1] = B[m1, m0]
C[m1] = B[m1, m0] :: max(m0)
"""
    out = run(src, A=np.arange(1, 7, dtype=np.float32))
    assert out["S"].tolist() == [10, 11]  # 1+2+3+4, 5+6 (the tile's last two are absent)
    assert out["C"].tolist() == [4, 6]


def test_shifted_access_reads_absent_past_the_edge():
    out = run("rank M\ninput A[m]\noutput Z[m]\nZ[m] = A[m + 1] * 2 + A[m - 1]\n",
              A=np.array([1, 2, 3], np.float32))
    # Z[0] = 2*2 + absent; Z[2] = absent*2 + 2 (the union keeps what is present)
    assert out["Z"].tolist() == [4, 7, 2]


def test_fully_masked_row_is_zero_in_every_form():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    q = np.random.default_rng(0).standard_normal((1, 2, 64, 9), dtype=np.float32)
    k = np.random.default_rng(1).standard_normal((1, 2, 64, 5), dtype=np.float32)
    v = np.random.default_rng(2).standard_normal((1, 2, 64, 5), dtype=np.float32)
    for name in ("attention/causal.ein", "attention/mha_causal_1pass.ein"):
        prog = einsumc.load(root / "examples" / name)
        o = next(iter(prog.compile()(Q=q, K=k, V=v).values()))
        assert np.isfinite(o).all()
        # bottom-right causal with P = 9 > M = 5: rows p < P - M see no key
        assert np.all(o[..., :4] == 0) and np.all(np.abs(o[..., 4:]).sum(axis=-2) > 0)


def test_sum_over_a_rank_the_value_does_not_vary_along():
    # the iteration space includes m (from the filter), so the sum repeats A[p] per m <= p
    out = run("rank M = 4, P\ninput A[p]\noutput Z[p]\nZ[p] = A[p] where m <= p\n",
              A=np.array([1, 1, 1, 1, 1], np.float32))
    assert out["Z"].tolist() == [1, 2, 3, 4, 4]


def test_reduction_order_sum_then_annotation():
    src = "rank E, M0, M1, P\ninput Q[e, p], BK[e, m1, m0]\noutput LM[m1, p]\n" \
          "LM[m1, p] = Q[e, p] * BK[e, m1, m0] :: max(m0)\n"
    rng = np.random.default_rng(3)
    q = rng.standard_normal((3, 4), dtype=np.float32)
    bk = rng.standard_normal((3, 2, 5), dtype=np.float32)
    out = run(src, Q=q, BK=bk)
    assert np.allclose(out["LM"], np.einsum("ep,eab->abp", q, bk).max(axis=1), atol=1e-6)


def test_prod_and_min_reductions():
    src = "rank M, P\ninput A[m, p]\noutput X[p], Y[p]\nX[p] = A[m, p] :: prod(m)\n" \
          "Y[p] = A[m, p] :: min(m)\n"
    a = np.array([[1, 2], [3, 4]], np.float32)
    out = run(src, A=a)
    assert out["X"].tolist() == [3, 8] and out["Y"].tolist() == [1, 2]


def test_rank_variable_as_value_and_broadcast_lhs():
    out = run("rank M = 3, P = 2\ninput A[p]\noutput Z[m, p]\nZ[m, p] = A[p] * (m - p)\n",
              A=np.array([1, 10], np.float32))
    assert out["Z"].tolist() == [[0, -10], [1, 0], [2, 10]]
    out = run("rank M = 3, P = 2\ninput A[p]\noutput Z[m, p]\nZ[m, p] = A[p]\n",
              A=np.array([1, 10], np.float32))
    assert out["Z"].tolist() == [[1, 10]] * 3


def test_scalar_output_is_0d():
    out = run("rank K\ninput A[k], B[k]\noutput Y\nY = A[k] * B[k]\n",
              A=np.arange(3, dtype=np.float32), B=np.ones(3, np.float32))
    assert out["Y"].shape == () and float(out["Y"]) == 3


def test_dtypes_and_precision():
    import ml_dtypes
    src = "rank M\ninput A[m] : bf16\noutput Z[m] : bf16, W[m] : f16\nZ[m] = A[m] * 2\nW[m] = A[m]\n"
    a = np.array([1.5, 2.5], dtype=ml_dtypes.bfloat16)
    out = run(src, A=a)
    assert out["Z"].dtype == ml_dtypes.bfloat16 and out["Z"].astype(np.float32).tolist() == [3, 5]
    assert out["W"].dtype == np.float16
    torch = pytest.importorskip("torch")
    out = run(src, A=torch.tensor([1.5, 2.5], dtype=torch.bfloat16))
    assert out["Z"].astype(np.float32).tolist() == [3, 5]
    f64 = run("rank M\ninput A[m] : f64\noutput Z[m] : f64\nZ[m] = A[m] + 1e-12\n",
              A=np.array([1.0]))
    assert f64["Z"].dtype == np.float64 and f64["Z"][0] != 1.0


def test_params_runtime_and_constant():
    src = "rank M = 4\nparam s0, c = 2 * M\ninput A[m]\noutput Z[m]\nZ[m] = A[m] * s0 + c\n"
    out = einsumc.load(src).compile()(A=np.ones(4, np.float32), s0=3.0)
    assert out["Z"].tolist() == [11] * 4


def test_iterative_prefix_sum_and_initial_iterate():
    src = """rank K
input A[k]
output S, S0
RS[k=0] = 10
RS[k+1] = RS[k] + A[k]
S = RS[K]
S0 = RS[0]
"""
    out = run(src, A=np.arange(1, 5, dtype=np.float32))
    assert float(out["S"]) == 20 and float(out["S0"]) == 10


def test_nan_behind_a_mask_does_not_leak_into_a_sum():
    # garbage (NaN) in a masked-out KV entry: absent points take no part in the sum
    src = "rank M, P\ninput Q[m, p], V[m]\noutput O[p]\nS[m, p] = Q[m, p] where m < 2\n" \
          "O[p] = S[m, p] * V[m]\n"
    v = np.ones(4, np.float32)
    v[2] = np.nan
    out = run(src, Q=np.ones((4, 3), np.float32), V=v)
    assert out["O"].tolist() == [2, 2, 2]


def test_inf_over_zero_inside_a_sum_is_zero():
    a = np.ones((3, 2), np.float32)
    a[0] = np.inf
    c = np.ones(3, np.float32)
    c[0] = 0
    out = run("rank M, P\ninput A[m, p], C[m]\noutput Y[p]\nY[p] = A[m, p] / C[m]\n", A=a, C=c)
    assert out["Y"].tolist() == [2, 2]  # rule 4 per term, then the sum


def test_zero_constant_divisor_of_a_contraction_with_inf_is_zero():
    """(q * k) / 0 is 0 per term (rule 4) even when q * k is inf: the matmul path must not
    turn it into 0 * inf = NaN."""
    q = np.ones((4, 2), np.float32)
    q[0, 0] = np.inf
    k = np.ones((4, 3), np.float32)
    src = "rank M, P, E = 4\nparam Z\ninput Q[e, p], K[e, m]\noutput S[m, p]\n" \
          "S[m, p] = Q[e, p] * K[e, m] / Z\n"
    out = einsumc.load(src).compile()(Q=q, K=k, Z=0.0)
    assert (out["S"] == 0).all()


def test_summed_variable_in_no_factor_counts_once_per_point():
    """A summed variable that no factor carries still counts once per present point (rules
    1-2): a filter true on the whole space, a read absent everywhere under a union."""
    a = np.array([1.0, 2.0])
    src = "rank I = 2, J = 3\ninput A[i] : f64\noutput O[i] : f64\nO[i] = A[i] * A[i] where j >= 0\n"
    assert run(src, A=a)["O"].tolist() == [3.0, 12.0]
    src = ("rank I = 2, K = 3\ninput A[i] : f64, B[k] : f64\noutput O[i] : f64\n"
           "O[i] = (B[k + K] + A[i]) * A[i]\n")
    assert run(src, A=a, B=np.full(3, 5.0))["O"].tolist() == [3.0, 12.0]
    src = "rank J = 3, P\ninput A[p] : f64\noutput O[p] : f64\nO[p] = A[p] * A[p] where j <= p\n"
    assert (run(src, A=np.ones(1000))["O"] == np.minimum(np.arange(1000) + 1, 3)).all()


def test_sum_of_products_with_inf_is_point_by_point():
    """0 * inf is NaN and x / 0 is 0 at each point, whatever order a contraction would use."""
    with np.errstate(all="ignore"):
        out = run("rank I = 2, J = 2\ninput A[i] : f64, B[j] : f64\noutput O : f64\n"
                  "O = A[i] * B[j]\n", A=np.array([np.inf, 1.0]), B=np.array([0.0, 1.0]))
        assert np.isnan(out["O"])
        out = run("rank K = 2\ninput A[k] : f64\noutput O : f64\nO = inf * A[k] * A[k]\n",
                  A=np.array([0.0, 1.0]))
        assert np.isnan(out["O"])
        out = run("rank I = 1\ninput A[i] : f64, B[i] : f64\noutput O : f64\n"
                  "O = A[i] / (2 / B[i])\n", A=np.array([np.inf]), B=np.array([0.0]))
        assert out["O"] == 0.0  # 2 / 0 = 0, inf / 0 = 0 (rule 4)


def test_integral_float_extent_and_unused_rank():
    out = run("rank K\nrank N = sqrt(16)\ninput A[k], B[n]\noutput Y\nY = A[k] * B[n]\n",
              A=np.ones(3, np.float32), B=np.ones(4, np.float32))
    assert float(out["Y"]) == 12
    out = run("rank M, N\ninput A[m]\noutput Y\nY = A[m]\n", A=np.ones(3, np.float32))
    assert float(out["Y"]) == 3


def test_final_iterate_read_by_a_statement_indexed_by_the_rank():
    out = run("rank K\ninput A[k]\noutput Y[k]\nR[k=0] = 0\nR[k+1] = R[k] + A[k]\n"
              "Y[k] = A[k] / R[K]\n", A=np.array([1, 2, 3], np.float32))
    np.testing.assert_allclose(out["Y"], [1 / 6, 2 / 6, 3 / 6], rtol=1e-6)


@pytest.mark.parametrize("src, message", [
    ("rank K\ninput A[k]\noutput R[k]\nR[k=0] = 0\nR[k+1] = R[k] + A[k]\n",
     "outputs of every iterate"),
    ("rank K\ninput A[k]\noutput Y\nR[k=0] = 0\nR[k+1] = R[k] + A[k]\nY = R[k+1]\n",
     "only a statement indexed by k"),
])
def test_every_iterate_reads_are_rejected_by_the_checker(src, message):
    with pytest.raises(einsumc.EinsumcError) as exc:
        einsumc.load(src)
    assert message in str(exc.value)


def test_masked_union_warning_through_a_chain():
    prog = einsumc.load("rank M, P\ninput X[m, p], B[m, p]\noutput Y[m, p]\n"
                        "XM[m, p] = X[m, p] where m < p\nT[m, p] = XM[m, p] * 2\n"
                        "Y[m, p] = 2 * T[m, p] + B[m, p]\n")
    assert any("masked by a `where` filter" in w.message and w.line == 6 for w in prog.warnings)
