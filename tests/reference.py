"""Independent float64 references for the example specs in ``examples/``.

Used by ``tests/test_examples.py``. Nothing here imports ``einsumc``: the references are
written from the math of each variant (reference/fusemax.md, reference/workloads.md), not
from the ``.ein`` files.

Layouts follow the specs: queries ``Q[..., e, p]``, keys ``K[..., e, m]``, values
``V[..., f, m]`` and outputs ``O[..., f, p]``; leading (batch, head) axes broadcast.
PyTorch's ``scaled_dot_product_attention`` wants ``(..., L, E)``, so every tensor is
transposed on the way in and out.

Masks are boolean ``allowed`` arrays of shape ``(..., P, M)`` (True = the query may see the
key). A query row that sees no key gives 0 (ein-language.md §3, absent-point rules 2, 4, 6);
SDPA gives NaN there, so those rows are zeroed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))


# ---------------------------------------------------------------------------- masks


def query_positions(P: int, M: int) -> np.ndarray:
    """Absolute position of each query under bottom-right alignment: ``p + M - P``."""
    return np.arange(P) + (M - P)


def causal_allowed(P: int, M: int) -> np.ndarray:
    """``m <= p + M - P`` as a ``(P, M)`` boolean array."""
    q = query_positions(P, M)[:, None]
    m = np.arange(M)[None, :]
    return m <= q


def window_allowed(P: int, M: int, W: int) -> np.ndarray:
    """Causal sliding window: ``q - W < m <= q`` with ``q = p + M - P``."""
    q = query_positions(P, M)[:, None]
    m = np.arange(M)[None, :]
    return (m <= q) & (q - m < W)


def sinks_window_allowed(P: int, M: int, W: int, S0: int) -> np.ndarray:
    """Sinks + window: ``m <= q and (q - m < W or m < S0)`` with ``q = p + M - P``."""
    q = query_positions(P, M)[:, None]
    m = np.arange(M)[None, :]
    return (m <= q) & ((q - m < W) | (m < S0))


def alibi_slopes(H: int) -> np.ndarray:
    """ALiBi's geometric slopes ``2^(-8 (h+1) / H)`` (Press et al.); any H."""
    return 2.0 ** (-8.0 * (np.arange(H) + 1) / H)


def alibi_bias(slope: np.ndarray, P: int, M: int) -> np.ndarray:
    """``-slope[h] * (q - m)`` with ``q = p + M - P``, shape ``(H, P, M)``."""
    q = query_positions(P, M)[:, None]
    m = np.arange(M)[None, :]
    return -np.asarray(slope, np.float64)[:, None, None] * (q - m)[None]


# ------------------------------------------------------------------ softmax attention


def attention(q, k, v, *, scale: float, allowed=None, bias=None) -> np.ndarray:
    """Softmax attention through torch SDPA in float64.

    ``q (..., E, P)``, ``k (..., E, M)``, ``v (..., F, M)`` -> ``(..., F, P)``.
    ``allowed``: boolean, broadcastable to ``(..., P, M)``; ``bias``: float, added to the
    scaled scores, broadcastable to ``(..., P, M)``. Rows with no allowed key give 0.
    """
    qt, kt, vt = (_t(x).transpose(-1, -2) for x in (q, k, v))
    mask = None
    if bias is not None:
        mask = _t(bias)
    dead = None
    if allowed is not None:
        al = torch.from_numpy(np.asarray(allowed, dtype=bool))
        neg = torch.zeros(al.shape, dtype=torch.float64).masked_fill(~al, float("-inf"))
        mask = neg if mask is None else mask + neg
        dead = ~al.any(dim=-1)  # (..., P)
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    if dead is not None:
        out = out.masked_fill(dead.unsqueeze(-1), 0.0)
    return out.transpose(-1, -2).numpy()


def attention_np(q, k, v, *, scale: float, allowed=None, bias=None) -> np.ndarray:
    """The same as :func:`attention`, written out in NumPy (used to check the SDPA path)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("...ep,...em->...pm", q, k) * scale
    if bias is not None:
        s = s + bias
    if allowed is None:
        allowed = np.ones(s.shape[-2:], dtype=bool)
    allowed = np.broadcast_to(allowed, s.shape)
    s = np.where(allowed, s, -np.inf)
    mx = s.max(axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    n = np.where(allowed, np.exp(s - mx), 0.0)
    d = n.sum(axis=-1, keepdims=True)
    a = np.divide(n, d, out=np.zeros_like(n), where=d > 0)
    return np.einsum("...pm,...fm->...fp", a, v)


def softcap_attention(q, k, v, *, scale: float, cap: float) -> np.ndarray:
    """Soft-capped scores ``cap * tanh(scale * q.k / cap)``, then softmax (NumPy, float64)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("...ep,...em->...pm", q, k) * scale
    s = cap * np.tanh(s / cap)
    n = np.exp(s - s.max(axis=-1, keepdims=True))
    a = n / n.sum(axis=-1, keepdims=True)
    return np.einsum("...pm,...fm->...fp", a, v)


def sink_attention(q, k, v, *, scale: float, s0: float) -> np.ndarray:
    """Softmax attention with one extra key whose logit is ``s0`` and whose value is 0.

    Built through SDPA: a zero key column (so ``q . k = 0``) and a zero value column are
    appended along ``m``, and an additive mask puts ``s0`` on that column only.
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    kz = np.concatenate([k, np.zeros(k.shape[:-1] + (1,))], axis=-1)
    vz = np.concatenate([v, np.zeros(v.shape[:-1] + (1,))], axis=-1)
    M, P = k.shape[-1], q.shape[-1]
    bias = np.zeros((P, M + 1))
    bias[:, M] = s0
    return attention(q, kz, vz, scale=scale, bias=bias)


def sink_attention_np(q, k, v, *, scale: float, s0: float) -> np.ndarray:
    """``sum_m exp(s) v / (exp(s0) + sum_m exp(s))`` written out in NumPy."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("...ep,...em->...pm", q, k) * scale
    mx = np.maximum(s.max(axis=-1, keepdims=True), s0)
    n = np.exp(s - mx)
    d = n.sum(axis=-1, keepdims=True) + np.exp(s0 - mx)
    return np.einsum("...pm,...fm->...fp", n / d, v)


# ------------------------------------------------------------------ other operators


def elu_plus_one(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def linear_attention(q, k, v) -> np.ndarray:
    """Non-causal linear attention with phi = elu + 1, in its *quadratic* form (float64)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    a = np.einsum("...ep,...em->...pm", elu_plus_one(q), elu_plus_one(k))
    a = a / a.sum(axis=-1, keepdims=True)
    return np.einsum("...pm,...fm->...fp", a, v)


def linear_attention_assoc(q, k, v) -> np.ndarray:
    """The same operator re-associated, ``phi(Q)^T (phi(K) V^T)`` (used to check the above)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    pq, pk = elu_plus_one(q), elu_plus_one(k)
    kv = np.einsum("...em,...fm->...ef", pk, v)
    z = pk.sum(axis=-1)
    num = np.einsum("...ep,...ef->...fp", pq, kv)
    den = np.einsum("...ep,...e->...p", pq, z)
    return num / den[..., None, :]


def cascade_z(a, b) -> np.ndarray:
    """FuseMax Cascades 1-3: ``Z = (sum_k A[k] B[k]) * (sum_k A[k])`` as a 0-d float64 array."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.asarray(np.dot(a, b) * a.sum())
