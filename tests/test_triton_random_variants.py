"""Random softmax-attention variants: the Triton backend (interpreter, f32) against NumPy.

Hypothesis draws a softmax-attention cascade as `.ein` text from a small grammar of the
variants the backend is meant to handle, loads it with `einsumc.load`, runs it with the
Triton backend on the CPU (Triton's interpreter) and compares every output with the NumPy
backend, the semantic definition (docs/language.md). Each variant runs under three configs:

  * the default (`--opt`: the one-loop online-softmax kernel when it can be derived);
  * `Config(opt=False)`: the cascade as written, one kernel per fusion group;
  * key tile 16 and 16 rows per program, so that M <= 70 spans several tiles (tile
    skipping, masked and unmasked loop bodies), with split-K forced to 0 (automatic),
    1, 2 or 3 splits.

The grammar (one Einsum per line, as the examples write them):

  * layouts: MHA `Q[b,h,e,p] K[b,h,e,m] V[b,h,f,m]`, GQA `Q[b,h,g,e,p]` with K/V lacking
    `g`, MQA with K/V lacking `h`; the batch rank is sometimes left out; K and V are
    sometimes passed with transposed strides;
  * extents: B, H in 1..2, G in 1..3, E and F in {4, 8, 16, 24} (F may differ from E),
    declared (`E = 8`) or symbolic (bound from the inputs); M and P in 1..70 drawn
    independently (P = 1, decode-like, has extra weight; P > M gives fully masked rows);
  * the score map between the contraction and the max: a scale (`/ sqrt(E)`, a literal
    param, a run-time param, `param sc = 1 / sqrt(E)`, or none) on the contraction or in the
    map, an ALiBi-style bias `+ slope[h] * (m - p)` read from an input, a soft-cap
    `cap * tanh(x / cap)` with a run-time param;
  * a filter (see FILTERS) on the score Einsum, the one the max reads; W in 1..10 and
    S0 in 0..4 are params, constants of the program or run-time arguments;
  * the form: 3-pass as written (`A = SN / SD`, `O = A * V`), deferred division
    (`NV = SN * V`, `O = NV / SD`), or fused (`O = SN * V / SD`).

Tolerance: max |triton - numpy| <= 2e-5 * max(1, max |numpy|), and no NaN where NumPy has
none. A refusal by the backend (`EinsumcError`: a documented limit) is not a failure: it is
counted and the example passed over. The counts are printed at the end of the module
(`pytest -s`). The test found one bug (the multi-kernel path emitted `tl.zeros`, a
`@triton.jit` function the interpreter cannot call); its reproducers are regression tests at
the end.

`EINSUMC_RANDOM_EXAMPLES=200` raises the number of examples (default 45, shared out over the
filters) for a longer hunt; `EINSUMC_RANDOM_SEED=n` picks another deterministic stream
(default: derandomized).
"""
from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import einsumc  # noqa: E402
from einsumc import EinsumcError  # noqa: E402
from einsumc.backends.triton.lower import Config  # noqa: E402
from einsumc.backends.triton.target import TritonInterpreterNotice, TritonTarget  # noqa: E402

#: examples in all, shared out over the filters (at least 2 per filter)
N_EXAMPLES = int(os.environ.get("EINSUMC_RANDOM_EXAMPLES", "45"))
SEED = os.environ.get("EINSUMC_RANDOM_SEED")
TOL = 2e-5

#: filters on the score Einsum; q = p + M - P is the query's absolute position (bottom-right
#: alignment). Most leave fully masked rows for some M, P (P > M, M = 1, W small, ...).
FILTERS = {
    "none": None,
    "causal": "m <= p + M - P",
    "causal_strict": "m < p + M - P",
    "causal_not": "not (m > p + M - P)",
    "window": "m <= p + M - P and m > p + M - P - W",
    "sinks": "m <= p + M - P and (p + M - P - m < W or m < S0)",
    "band": "m - p <= W and p - m <= W",
    "not_diag": "m != p + M - P",
    "not_diag_top": "m != p",
    "anticausal": "m >= p",
    "top_left_causal": "m <= p",
    "strided_causal": "m <= p + M - P and m % 3 != 1",
    "block_diag": "m // 4 == p // 4",
    "skip_sinks": "m >= S0",           # one variable only (its mask is broadcast)
    "rows_from": "p >= S0",            # masks whole rows; one variable only
}

#: M and P: uniform over 1..70 (hypothesis' integers() favour the ends too much for a few
#: dozen examples); P = 1 (decoding) gets extra weight
EXTENTS = tuple(range(1, 71))
HEAD_DIMS = (4, 8, 16, 24)


def configs(v: Variant) -> dict:
    return {"default": None, "as-written": Config(opt=False),
            f"tile16-split{v.split}": Config(block_r=16, num_stages=1, tile=16, split=v.split)}


#: what ran (config / path), what was refused (config, message)
RAN: Counter = Counter()
REFUSALS: Counter = Counter()


# ----------------------------------------------------------------------------- the model
@dataclass
class Variant:
    layout: str          # "mha" | "gqa" | "mqa"
    batch: bool          # with a batch rank b
    B: int
    H: int
    G: int
    E: int
    F: int
    M: int
    P: int
    heads_symbolic: bool  # `rank E, F` bound from the inputs instead of `E = 8, F = 4`
    scale: str           # "sqrtE" | "const" | "param" | "derived" | "none"
    scale_where: str     # "dot" (on the contraction) | "map" (in the score map)
    bias: bool           # + slope[h] * (m - p)
    softcap: bool        # cap * tanh(x / cap)
    filt: str            # a key of FILTERS
    form: str            # "3pass" | "deferred" | "fused"
    W: int
    S0: int
    w_const: bool        # W, S0 constants of the program (else run-time params)
    cap: float
    sc: float            # the value of the scale param ("const" / "param")
    q_amp: float         # amplitude of Q (peakier softmax)
    transposed: bool     # K and V passed with transposed strides
    seed: int
    split: int = 0       # split-K splits forced in the tile-16 config (0: automatic)

    @property
    def outer(self) -> tuple[str, ...]:
        """The ranks in front of every query-side tensor."""
        lead = ("b",) if self.batch else ()
        return lead + (("h", "g") if self.layout == "gqa" else ("h",))

    @property
    def kv_outer(self) -> tuple[str, ...]:
        lead = ("b",) if self.batch else ()
        return lead + (() if self.layout == "mqa" else ("h",))

    @property
    def filter_params(self) -> list[str]:
        return [w for w in ("W", "S0") if re.search(rf"\b{w}\b", FILTERS[self.filt] or "")]

    def source(self) -> str:
        o, kvo = self.outer, self.kv_outer

        def T(name, *rest):  # a query-side tensor
            return f"{name}[{', '.join(o + rest)}]"

        def KV(name, *rest):  # a key-side tensor
            return f"{name}[{', '.join(kvo + rest)}]"

        ranks = [r for r in ("B", "H", "G") if r.lower() in o] + ["M", "P"]
        heads = "E, F" if self.heads_symbolic else f"E = {self.E}, F = {self.F}"
        lines = [f"rank {', '.join(ranks)}, {heads}"]
        params = {"param": ["sc"], "const": [f"sc = {self.sc!r}"],
                  "derived": ["sc = 1 / sqrt(E)"]}.get(self.scale, [])
        if self.softcap:
            params.append("cap")
        params += [f"{w} = {getattr(self, w)}" if self.w_const else w
                   for w in self.filter_params]
        if params:
            lines.append("param " + ", ".join(params))
        ins = [T("Q", "e", "p"), KV("K", "e", "m"), KV("V", "f", "m")]
        if self.bias:
            ins.append("slope[h]")
        lines.append("input  " + ", ".join(ins))
        lines.append("output " + T("O", "f", "p"))

        scale = {"sqrtE": " / sqrt(E)", "none": ""}.get(self.scale, " * sc")
        dot = f"{T('Q', 'e', 'p')} * {KV('K', 'e', 'm')}"
        where = f" where {FILTERS[self.filt]}" if FILTERS[self.filt] else ""
        if self.bias or self.softcap or (self.scale_where == "map" and scale):
            # the dot product in its own Einsum, the nonlinear score map in the next
            lines.append(f"{T('QK', 'm', 'p')} = {dot}"
                         f"{scale if self.scale_where == 'dot' else ''}")
            x = T("QK", "m", "p")
            if self.scale_where == "map" and scale:
                x = f"({x}{scale})" if self.softcap else f"{x}{scale}"
            if self.softcap:
                x = f"cap * tanh({x} / cap)"
            if self.bias:
                x = f"{x} + slope[h] * (m - p)"
            lines.append(f"{T('S', 'm', 'p')} = {x}{where}")
        else:
            lines.append(f"{T('S', 'm', 'p')} = {dot}{scale}{where}")
        S, SN, SD = T("S", "m", "p"), T("SN", "m", "p"), T("SD", "p")
        lines.append(f"{T('GM', 'p')} = {S} :: max(m)")
        lines.append(f"{SN} = exp({S} - {T('GM', 'p')})")
        lines.append(f"{SD} = {SN}")
        V = KV("V", "f", "m")
        if self.form == "3pass":
            lines.append(f"{T('A', 'm', 'p')} = {SN} / {SD}")
            lines.append(f"{T('O', 'f', 'p')} = {T('A', 'm', 'p')} * {V}")
        elif self.form == "deferred":
            lines.append(f"{T('NV', 'f', 'p')} = {SN} * {V}")
            lines.append(f"{T('O', 'f', 'p')} = {T('NV', 'f', 'p')} / {SD}")
        else:
            lines.append(f"{T('O', 'f', 'p')} = {SN} * {V} / {SD}")
        return "\n".join(lines) + "\n"

    def run_params(self) -> dict:
        p = {}
        if self.scale == "param":
            p["sc"] = self.sc
        if self.softcap:
            p["cap"] = self.cap
        if not self.w_const:
            p.update({w: getattr(self, w) for w in self.filter_params})
        return p

    def shapes(self) -> dict[str, tuple[int, ...]]:
        ext = {"b": self.B, "h": self.H, "g": self.G, "e": self.E, "f": self.F,
               "m": self.M, "p": self.P}
        o, kvo = self.outer, self.kv_outer
        s = {"Q": o + ("e", "p"), "K": kvo + ("e", "m"), "V": kvo + ("f", "m")}
        if self.bias:
            s["slope"] = ("h",)
        return {k: tuple(ext[v] for v in vs) for k, vs in s.items()}

    def inputs(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        out = {k: rng.standard_normal(s).astype(np.float32) for k, s in self.shapes().items()}
        out["Q"] *= np.float32(self.q_amp)
        if "slope" in out:
            out["slope"] = (np.abs(out["slope"]) * 0.5).astype(np.float32)
        return out

    def describe(self) -> str:
        ext = f"B={self.B} H={self.H} G={self.G} E={self.E} F={self.F} M={self.M} P={self.P}"
        return (f"{ext} params={self.run_params()} q_amp={self.q_amp} seed={self.seed} "
                f"transposed={self.transposed}")


@st.composite
def variants(draw, filt: str | None = None) -> Variant:
    layout = draw(st.sampled_from(["mha", "gqa", "mqa"]))
    return Variant(
        layout=layout,
        batch=draw(st.booleans()),
        B=draw(st.integers(1, 2)),
        H=draw(st.integers(1, 2)),
        G=draw(st.integers(1, 3)) if layout == "gqa" else 1,
        E=draw(st.sampled_from(HEAD_DIMS)),
        F=draw(st.sampled_from(HEAD_DIMS)),
        M=draw(st.sampled_from(EXTENTS)),
        P=draw(st.sampled_from((1,) * 8 + EXTENTS)),
        heads_symbolic=draw(st.sampled_from([False, False, True])),
        scale=draw(st.sampled_from(["sqrtE", "const", "param", "derived", "none"])),
        scale_where=draw(st.sampled_from(["dot", "map"])),
        bias=draw(st.booleans()),
        softcap=draw(st.booleans()),
        filt=filt if filt is not None else draw(st.sampled_from(list(FILTERS))),
        form=draw(st.sampled_from(["3pass", "deferred", "fused"])),
        W=draw(st.integers(1, 10)),
        S0=draw(st.integers(0, 4)),
        w_const=draw(st.booleans()),
        cap=draw(st.sampled_from([0.5, 2.0, 5.0, 30.0])),
        sc=draw(st.sampled_from([0.125, 0.3, 1.0, 1.7])),
        q_amp=draw(st.sampled_from([0.5, 1.0, 3.0])),
        transposed=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
        split=draw(st.sampled_from([0, 1, 2, 3])),
    )



# ----------------------------------------------------------------------------- the check
def _path(fn) -> str:
    """Which kernel(s) the program runs: multi-kernel, one-loop, or (last launch) split-K."""
    if "multi-kernel path" in fn.source:
        return "multi-kernel"
    last = getattr(fn.module(True), "LAST_LAUNCH", {})
    return f"split-K x{last['nsplit']}" if last.get("kernel") == "split" else "one-loop"


def _torch_inputs(v: Variant, ins: dict) -> dict:
    out = {k: torch.from_numpy(x.copy()) for k, x in ins.items()}
    if v.transposed:  # the same values, other strides
        for k in ("K", "V"):
            out[k] = out[k].transpose(-1, -2).contiguous().transpose(-1, -2)
    return out


def check_variant(v: Variant, only: str | None = None) -> None:
    text = v.source()
    prog = einsumc.load(text)
    ins, params = v.inputs(), v.run_params()
    ref = prog.compile("numpy")(**ins, **params)
    for cname, config in configs(v).items():
        if only is not None and not cname.startswith(only):
            continue
        where = f"[{cname}] {v.describe()}\n{text}"
        try:
            fn = TritonTarget().compile(prog, config=config)
        except EinsumcError as e:
            REFUSALS[(cname, str(e).strip().splitlines()[0][:160])] += 1
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TritonInterpreterNotice)
                out = fn(**_torch_inputs(v, ins), **params)
        except EinsumcError as e:
            REFUSALS[(cname, str(e).strip().splitlines()[0][:160])] += 1
            continue
        except Exception as e:
            raise AssertionError(f"crash {type(e).__name__}: {e} {where}") from e
        path = _path(fn)
        RAN[f"{cname.split('-split')[0]}/{path}"] += 1
        assert set(out) == set(ref), where
        for k in ref:
            a = out[k].float().numpy()
            b = np.asarray(ref[k], dtype=np.float32)
            assert a.shape == b.shape, f"{k}: shape {a.shape} != {b.shape} {where}"
            bad = np.isnan(a) & ~np.isnan(b)
            assert not bad.any(), f"{k}: {int(bad.sum())} NaN where NumPy has none {where}"
            err = float(np.nanmax(np.abs(a - b), initial=0.0)) / max(1.0, float(np.abs(b).max()))
            assert err <= TOL, f"{k}: relative error {err:.3g} > {TOL} ({path}) {where}"


# ----------------------------------------------------------------------------- the tests
def _settings(f):
    n = max(2, -(-N_EXAMPLES // len(FILTERS)))
    f = settings(max_examples=n, deadline=None, derandomize=SEED is None, database=None,
                 print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(f)
    return seed(int(SEED))(f) if SEED is not None else f


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nrandom attention variants: ran {dict(sorted(RAN.items()))}; "
          f"refused {sum(REFUSALS.values())}")
    for (cname, msg), n in sorted(REFUSALS.items()):
        print(f"  refused x{n} [{cname}]: {msg}")


@pytest.mark.parametrize("filt", list(FILTERS))
@_settings
@given(data=st.data())
def test_random_variant_matches_numpy(filt: str, data):
    """Stratified by filter (the most fragile axis); everything else is drawn."""
    check_variant(data.draw(variants(filt), label="variant"))


def test_generated_text_loads_in_every_layout_and_form():
    """The generator writes only text the front end accepts (cheap: no Triton run)."""
    for filt in FILTERS:
        for layout in ("mha", "gqa", "mqa"):
            for form, scale, sym in (("3pass", "param", False), ("deferred", "derived", True),
                                     ("fused", "sqrtE", False)):
                v = Variant(layout, True, 1, 2, 2, 8, 4, 5, 3, sym, scale, "map", True, True,
                            filt, form, 3, 1, False, 2.0, 0.3, 1.0, False, 0)
                prog = einsumc.load(v.source())
                assert {d.name for d in prog.inputs} == set(v.shapes())


# ----------------------------------------------------------------------------- reproducers
def _run_small(src: str, config, **params):
    prog = einsumc.load(src)
    g = torch.Generator().manual_seed(0)
    ins = {"Q": torch.randn(4, 3, generator=g), "K": torch.randn(4, 5, generator=g),
           "V": torch.randn(4, 5, generator=g)}
    ref = prog.compile("numpy")(**{k: x.numpy() for k, x in ins.items()}, **params)["O"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TritonInterpreterNotice)
        out = TritonTarget().compile(prog, config=config)(**ins, **params)["O"]
    assert np.abs(out.numpy() - ref).max() <= TOL


SMALL = """rank M, P, {heads}
input  Q[e, p], K[e, m], V[f, m]
output O[f, p]
S[m, p] = Q[e, p] * K[e, m]{rest}
GM[p] = S[m, p] :: max(m)
SN[m, p] = exp(S[m, p] - GM[p])
SD[p] = SN[m, p]
O[f, p] = SN[m, p] * V[f, m] / SD[p]
"""


#: the cases that crashed the multi-kernel path in the interpreter (it emitted `tl.zeros`)
TL_ZEROS_CASES = [
    ("E = 4, F = 4", " where m >= 2"),        # a filter over m only
    ("E = 4, F = 4", " where p >= 1"),        # a filter over p only
    ("E, F", " / sqrt(E)"),                   # sqrt of a symbolic extent
    ("E = 4, F = 4", " * tanh(1)"),           # a function of constants only
]
TL_ZEROS_IDS = ["filter-m-only", "filter-p-only", "sqrt-symbolic-E", "function-of-constants"]


@pytest.mark.parametrize("heads,rest", TL_ZEROS_CASES, ids=TL_ZEROS_IDS)
@pytest.mark.parametrize("config", [Config(opt=False), None], ids=["multi-kernel", "default"])
def test_broadcast_constants_run_in_the_interpreter(heads, rest, config):
    _run_small(SMALL.format(heads=heads, rest=rest), config)
