"""Random softmax-attention variants: the Triton backend (interpreter, f32) against NumPy.

Hypothesis draws a softmax-attention cascade as `.ein` text from a small grammar of the
variants the backend is meant to handle, loads it with `einsumc.load`, and runs it with the
Triton backend on the CPU (Triton's interpreter) twice — with the default config (which
applies `--opt` and gives a one-loop online-softmax kernel when it can) and with
`Config(opt=False)` (the cascade as written, one kernel per fusion group) — and compares
every output with the NumPy backend, the semantic definition (docs/language.md):

  * layouts: MHA `Q[b,h,e,p] K[b,h,e,m] V[b,h,f,m]`, GQA `Q[b,h,g,e,p]` with K/V lacking
    `g`, MQA with K/V lacking `h`; the batch rank is sometimes left out;
  * extents: B, H in 1..2, G in 1..3, E and F fixed in {4, 8, 16, 24} (F may differ from
    E), M and P in 1..70 drawn independently (P = 1 decode-like cases, P > M);
  * the score map between the contraction and the max: a scale (`/ sqrt(E)`, a literal, or
    a param), an ALiBi-style bias `slope[h] * (m - p)` read from an input, a soft-cap
    `cap * tanh(x / cap)` with a run-time param, or nothing;
  * a filter on the score Einsum (the one the max reads): none, causal bottom-right
    (`m <= p + M - P`, also strict), sliding window with a param W in 1..10, sinks + window,
    `m != ...`, `m >= p`; many of these leave fully masked rows (which must read 0);
  * the form: 3-pass as written (`A = SN / SD`, `O = A * V`), deferred division
    (`NV = SN * V`, `O = NV / SD`) or the fused `O = SN * V / SD`.

Tolerance: max |triton - numpy| <= 2e-5 * max(1, max |numpy|), and no NaN where NumPy has
none. A refusal by the backend (`EinsumcError`, a documented limit) is not a failure: it
is counted (printed at the end of the module with `-s`) and the example is passed over.

`EINSUMC_RANDOM_EXAMPLES=200` raises the number of examples (default 30) for a longer
hunt; `EINSUMC_RANDOM_SEED` picks another deterministic stream (default: derandomized).
"""
from __future__ import annotations

import os
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
N_EXAMPLES = int(os.environ.get("EINSUMC_RANDOM_EXAMPLES", "36"))
SEED = os.environ.get("EINSUMC_RANDOM_SEED")
TOL = 2e-5


def configs(v: "Variant") -> dict:
    """The default config (--opt: one loop when it can), the cascade as written (one kernel
    per fusion group), and small key tiles (16) and row blocks (16) so that M <= 70 spans
    several tiles (tile skipping, masked and unmasked tile bodies), with split-K forced to
    `v.split` splits (0: automatic) where the backend builds it."""
    return {"default": None, "as-written": Config(opt=False),
            f"tile16-split{v.split}": Config(block_r=16, num_stages=1, tile=16, split=v.split)}

#: refusals (EinsumcError at compile or launch) by config and first line of the message
REFUSALS: Counter = Counter()
RAN: Counter = Counter()


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
    scale: str           # "sqrtE" | "const" | "param" | "none"
    scale_where: str     # "dot" (on the contraction) | "map" (in the score map)
    bias: bool           # + slope[h] * (m - p)
    softcap: bool        # cap * tanh(x / cap)
    filt: str            # see FILTERS
    form: str            # "3pass" | "deferred" | "fused"
    W: int
    S0: int
    w_const: bool        # W, S0 as constants of the program (else run-time params)
    cap: float
    sc: float            # the scale constant / param value
    q_amp: float         # amplitude of Q (peakier softmax)
    seed: int
    split: int = 0       # split-K splits forced in the tile-16 config (0: automatic)

    # ---- index lists
    def ix(self, *names: str) -> str:
        return ", ".join(names)

    @property
    def outer(self) -> tuple[str, ...]:
        """Ranks in front of every tensor of the query side."""
        lead = ("b",) if self.batch else ()
        return lead + (("h", "g") if self.layout == "gqa" else ("h",))

    @property
    def kv_outer(self) -> tuple[str, ...]:
        lead = ("b",) if self.batch else ()
        return lead + (() if self.layout == "mqa" else ("h",))

    def source(self) -> str:
        o, kvo = self.outer, self.kv_outer
        T = lambda name, *rest: f"{name}[{', '.join(o + rest)}]"  # noqa: E731
        KV = lambda name, *rest: f"{name}[{', '.join(kvo + rest)}]"  # noqa: E731
        sym = [r for r in ("B", "H", "G") if r.lower() in o] + ["M", "P"]
        lines = [f"rank {', '.join(sym)}, E = {self.E}, F = {self.F}"]
        params = []
        if self.scale == "param":
            params.append("sc")
        elif self.scale == "const":
            params.append(f"sc = {self.sc!r}")
        if self.softcap:
            params.append("cap")
        if self.filt in ("window", "sinks"):
            params.append(f"W = {self.W}" if self.w_const else "W")
        if self.filt == "sinks":
            params.append(f"S0 = {self.S0}" if self.w_const else "S0")
        if params:
            lines.append("param " + ", ".join(params))
        ins = [T("Q", "e", "p"), KV("K", "e", "m"), KV("V", "f", "m")]
        if self.bias:
            ins.append("slope[h]")
        lines.append("input  " + ", ".join(ins))
        lines.append("output " + T("O", "f", "p"))

        scale_txt = {"sqrtE": " / sqrt(E)", "const": " * sc", "param": " * sc", "none": ""}[
            self.scale]
        dot = f"{T('Q', 'e', 'p')} * {KV('K', 'e', 'm')}"
        need_map = self.bias or self.softcap or (self.scale_where == "map" and scale_txt)
        where = FILTERS[self.filt]
        where_txt = f" where {where}" if where else ""
        if need_map:
            on_dot = scale_txt if self.scale_where == "dot" else ""
            lines.append(f"{T('QK', 'm', 'p')} = {dot}{on_dot}")
            x = T("QK", "m", "p")
            if self.scale_where == "map" and scale_txt:
                x = f"{x}{scale_txt}"
            if self.softcap:
                x = f"cap * tanh({x} / cap)" if self.scale_where == "dot" or not scale_txt \
                    else f"cap * tanh(({x}) / cap)"
            if self.bias:
                x = f"{x} + slope[h] * (m - p)"
            lines.append(f"{T('S', 'm', 'p')} = {x}{where_txt}")
        else:
            lines.append(f"{T('S', 'm', 'p')} = {dot}{scale_txt}{where_txt}")
        lines.append(f"{T('GM', 'p')} = {T('S', 'm', 'p')} :: max(m)")
        lines.append(f"{T('SN', 'm', 'p')} = exp({T('S', 'm', 'p')} - {T('GM', 'p')})")
        lines.append(f"{T('SD', 'p')} = {T('SN', 'm', 'p')}")
        if self.form == "3pass":
            lines.append(f"{T('A', 'm', 'p')} = {T('SN', 'm', 'p')} / {T('SD', 'p')}")
            lines.append(f"{T('O', 'f', 'p')} = {T('A', 'm', 'p')} * {KV('V', 'f', 'm')}")
        elif self.form == "deferred":
            lines.append(f"{T('NV', 'f', 'p')} = {T('SN', 'm', 'p')} * {KV('V', 'f', 'm')}")
            lines.append(f"{T('O', 'f', 'p')} = {T('NV', 'f', 'p')} / {T('SD', 'p')}")
        else:
            lines.append(f"{T('O', 'f', 'p')} = {T('SN', 'm', 'p')} * {KV('V', 'f', 'm')}"
                         f" / {T('SD', 'p')}")
        return "\n".join(lines) + "\n"

    def run_params(self) -> dict:
        p = {}
        if self.scale == "param":
            p["sc"] = self.sc
        if self.softcap:
            p["cap"] = self.cap
        if self.filt in ("window", "sinks") and not self.w_const:
            p["W"] = self.W
        if self.filt == "sinks" and not self.w_const:
            p["S0"] = self.S0
        return p

    def shapes(self) -> dict[str, tuple[int, ...]]:
        ext = dict(b=self.B, h=self.H, g=self.G, e=self.E, f=self.F, m=self.M, p=self.P)
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
            out["slope"] = np.abs(out["slope"]).astype(np.float32) * np.float32(0.5)
        return out

    def describe(self) -> str:
        ext = f"B={self.B} H={self.H} G={self.G} E={self.E} F={self.F} M={self.M} P={self.P}"
        return f"{ext} params={self.run_params()} q_amp={self.q_amp} seed={self.seed}"


#: filters on the score Einsum (q = p + M - P is the query's absolute position)
FILTERS = {
    "none": None,
    "causal": "m <= p + M - P",
    "causal_strict": "m < p + M - P",
    "window": "m <= p + M - P and m > p + M - P - W",
    "sinks": "m <= p + M - P and (p + M - P - m < W or m < S0)",
    "not_diag": "m != p + M - P",
    "not_diag_top": "m != p",
    "anticausal": "m >= p",
    "top_left_causal": "m <= p",
}


#: M and P: uniform over 1..70 (hypothesis' integers() favour the ends too much for a
#: few dozen examples); P = 1 (decoding) gets extra weight above
EXTENTS = tuple(range(1, 71))


@st.composite
def variants(draw, filt: str | None = None) -> Variant:
    layout = draw(st.sampled_from(["mha", "gqa", "mqa"]))
    scale = draw(st.sampled_from(["sqrtE", "const", "param", "none"]))
    return Variant(
        layout=layout,
        batch=draw(st.booleans()),
        B=draw(st.integers(1, 2)),
        H=draw(st.integers(1, 2)),
        G=draw(st.integers(1, 3)) if layout == "gqa" else 1,
        E=draw(st.sampled_from([4, 8, 16, 24])),
        F=draw(st.sampled_from([4, 8, 16, 24])),
        M=draw(st.sampled_from(EXTENTS)),
        P=draw(st.sampled_from((1,) * 8 + EXTENTS)),
        scale=scale,
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
        seed=draw(st.integers(0, 2**16)),
        split=draw(st.sampled_from([0, 1, 2, 3])),
    )


# ----------------------------------------------------------------------------- the check
def _ref(prog, ins, params):
    return prog.compile("numpy")(**ins, **params)


def _triton(prog, ins, params, config):
    fn = TritonTarget().compile(prog, config=config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TritonInterpreterNotice)
        return fn, fn(**{k: torch.from_numpy(v.copy()) for k, v in ins.items()}, **params)


def _path(fn) -> str:
    """Which kernel(s) the last launch ran: multi-kernel, one-loop, or split-K."""
    if "multi-kernel path" in fn.source:
        return "multi-kernel"
    last = getattr(fn.module(True), "LAST_LAUNCH", {})
    return f"split-K x{last['nsplit']}" if last.get("kernel") == "split" else "one-loop"


def check_variant(v: Variant, only: str | None = None) -> None:
    text = v.source()
    prog = einsumc.load(text)
    ins, params = v.inputs(), v.run_params()
    ref = _ref(prog, ins, params)
    for cname, config in configs(v).items():
        if only is not None and not cname.startswith(only):
            continue
        try:
            fn, out = _triton(prog, ins, params, config)
        except EinsumcError as e:
            REFUSALS[(cname, str(e).strip().splitlines()[0][:160])] += 1
            continue
        RAN[f"{cname.split('-split')[0]}/{_path(fn)}"] += 1
        assert set(out) == set(ref)
        for k in ref:
            a = out[k].float().numpy()
            b = np.asarray(ref[k], dtype=np.float32)
            where = f"[{cname}] {v.describe()}\n{text}"
            assert a.shape == b.shape, f"{k}: shape {a.shape} != {b.shape} {where}"
            bad = np.isnan(a) & ~np.isnan(b)
            assert not bad.any(), f"{k}: {int(bad.sum())} NaN where NumPy has none {where}"
            err = float(np.nanmax(np.abs(a - b), initial=0.0)) / max(1.0, float(np.abs(b).max()))
            assert err <= TOL, f"{k}: relative error {err:.3g} > {TOL} {where}"


# ----------------------------------------------------------------------------- the tests
def _settings(f):
    n = max(2, -(-N_EXAMPLES // len(FILTERS)))
    f = settings(max_examples=n, deadline=None, derandomize=SEED is None,
                 database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(f)
    return seed(int(SEED))(f) if SEED is not None else f


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nrandom variants: ran {dict(RAN)}; refused {sum(REFUSALS.values())}")
    for (cname, msg), n in sorted(REFUSALS.items()):
        print(f"  refused x{n} [{cname}]: {msg}")


@pytest.mark.parametrize("filt", list(FILTERS))
@_settings
@given(data=st.data())
def test_random_variant_matches_numpy(filt: str, data):
    """Stratified by filter (the most fragile axis), everything else drawn."""
    check_variant(data.draw(variants(filt), label="variant"))


def test_every_filter_loads_in_every_layout():
    """The generator only writes text the front end accepts (cheap: no Triton run)."""
    for filt in FILTERS:
        for layout in ("mha", "gqa", "mqa"):
            for form in ("3pass", "deferred", "fused"):
                v = Variant(layout, True, 1, 2, 2, 8, 4, 5, 3, "param", "map", True,
                            True, filt, form, 3, 1, False, 2.0, 0.3, 1.0, 0)
                einsumc.load(v.source())
