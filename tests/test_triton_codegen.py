"""Generated Triton code: determinism, golden files, hostile names, and AOT compilation for
sm_80 / sm_90 without a GPU (registers and spills from ptxas -v, shared memory from the
compiled metadata, tensor-core MMA for the dots)."""
from __future__ import annotations

import ast
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import einsumc  # noqa: E402
from einsumc import EinsumcError  # noqa: E402
from einsumc.backends.triton.target import TritonInterpreterNotice, TritonTarget  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden" / "triton"


@pytest.mark.parametrize("name", ["mha_1pass", "sinks_window"])
def test_golden_and_deterministic(name):
    prog = einsumc.load(EX / "attention" / f"{name}.ein")
    a = TritonTarget().emit(prog)
    b = TritonTarget().emit(einsumc.load(EX / "attention" / f"{name}.ein"))
    assert a == b  # byte-identical
    path = GOLDEN / f"{name}.py"
    if os.environ.get("EINSUMC_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(a)
    assert a == path.read_text(), f"regenerate with EINSUMC_UPDATE_GOLDEN=1 ({path})"


def test_emitted_module_is_standalone():
    text = TritonTarget().emit(einsumc.load(EX / "attention/gqa.ein"))
    tree = ast.parse(text)
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imports.add(node.module.split(".")[0])
    assert imports <= {"math", "torch", "triton"}
    assert "#   S[b, h, g, m, p] = Q[b, h, g, e, p] * K[b, h, e, m] / sqrt(E)" in text
    assert "def launch(" in text and "def einsumc_kernel(" in text


HOSTILE = """
rank B, Lambda, M, P, E = 16, F = 16, M0 = 16
rank M1 = ceil(M / M0)
param tl = 2, triton
input  torch[b, lambda, e, p], K[b, lambda, e, m], V[b, lambda, f, m]
output def[b, lambda, f, p]
BK[b, lambda, e, m1, m0]   = K[b, lambda, e, m1*M0 + m0]
BV[b, lambda, f, m1, m0]   = V[b, lambda, f, m1*M0 + m0]
RM[b, lambda, m1=0, p]     = -inf
RD[b, lambda, m1=0, p]     = 0
RNVaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa[b, lambda, f, m1=0, p] = 0
BQK[b, lambda, m1, m0, p]  = torch[b, lambda, e, p] * BK[b, lambda, e, m1, m0] * triton
    where m1*M0 + m0 <= p + M - P + tl
LM[b, lambda, m1, p]       = BQK[b, lambda, m1, m0, p] :: max(m0)
RM[b, lambda, m1+1, p]     = max(RM[b, lambda, m1, p], LM[b, lambda, m1, p])
SLN[b, lambda, m1, m0, p]  = exp(BQK[b, lambda, m1, m0, p] - RM[b, lambda, m1+1, p])
SLD[b, lambda, m1, p]      = SLN[b, lambda, m1, m0, p]
SLNV[b, lambda, f, m1, p]  = SLN[b, lambda, m1, m0, p] * BV[b, lambda, f, m1, m0]
PRM[b, lambda, m1, p]      = exp(RM[b, lambda, m1, p] - RM[b, lambda, m1+1, p])
SPD[b, lambda, m1, p]      = RD[b, lambda, m1, p] * PRM[b, lambda, m1, p]
RD[b, lambda, m1+1, p]     = SLD[b, lambda, m1, p] + SPD[b, lambda, m1, p]
SPNV[b, lambda, f, m1, p]  = RNVaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa[b, lambda, f, m1, p] * PRM[b, lambda, m1, p]
RNVaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa[b, lambda, f, m1+1, p] = SLNV[b, lambda, f, m1, p] + SPNV[b, lambda, f, m1, p]
def[b, lambda, f, p]       = RNVaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa[b, lambda, f, M1, p] / RD[b, lambda, M1, p]
"""


def test_hostile_names_are_mangled_and_run():
    try:
        prog = einsumc.load(HOSTILE)
    except EinsumcError as exc:  # the language may reject keywords as names: also fine
        pytest.skip(f"the frontend rejects these names: {str(exc).splitlines()[0]}")
    text = TritonTarget().emit(prog)
    compile(text, "<generated>", "exec")
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    tree = ast.parse(code)
    idents = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    idents |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) for a in n.args.args}
    for raw in ("lambda", "def", "K", "V", "RM", "BK", "SLN", "M0"):
        assert raw not in idents
    assert max(len(i) for i in idents) <= 40
    assert "tl" in idents and "triton" in idents and "torch" in idents  # the real modules
    g = torch.Generator().manual_seed(1)
    ins = {"torch": torch.randn(1, 2, 16, 20, generator=g),
           "K": torch.randn(1, 2, 16, 37, generator=g), "V": torch.randn(1, 2, 16, 37, generator=g)}
    ref = prog.compile("numpy")(**ins, triton=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TritonInterpreterNotice)
        out = TritonTarget().compile(prog)(**ins, triton=0.25)
    assert np.abs(out["def"].numpy() - ref["def"]).max() < 2e-5


def test_sub_tiles_only_for_online_normalization():
    from einsumc.backends.triton.lower import Lowering, prepare
    prog, how = prepare(einsumc.load(EX / "attention/mha_1pass.ein"))
    low = Lowering(prog, how)
    assert low.splittable() is None
    src = (EX / "attention/mha_1pass.ein").read_text().replace(
        "RD[b, h, m1+1, p]     = SLD[b, h, m1, p] + SPD[b, h, m1, p]",
        "RD[b, h, m1+1, p]     = SLD[b, h, m1, p] + RD[b, h, m1, p]")
    low2 = Lowering(einsumc.load(src), "as written")
    assert low2.splittable() is not None
    assert "sub-tiles" not in TritonTarget().emit(einsumc.load(src))


# ------------------------------------------------------------------------------------- AOT
SOFTMAX = ["mha", "mha_1pass", "mha_causal_1pass", "causal", "gqa", "mqa", "sqa", "alibi",
           "softcap", "sliding_window", "sinks_window", "cross_attention",
           "learnable_sink_1pass", "decode"]


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("name", SOFTMAX)
def test_aot_every_softmax_example(name, arch):
    from einsumc.backends.triton.aot import compile_kernel
    prog = einsumc.load(EX / "attention" / f"{name}.ein")
    r, _ = compile_kernel(prog, arch, dtype="f16")
    assert r.mma_dots == r.dots >= 2, "both contractions on tensor cores"
    # wgmma needs 64 rows per warp group: decode's 16 rows use mma.sync on sm_90 too
    assert r.mma_insn in (("wgmma", "mma.sync") if arch == 90 else ("mma.sync",))
    assert r.smem_ok


def _with_head_dim(d: int) -> str:
    text = (EX / "attention/mha_1pass.ein").read_text()
    return text.replace("rank B, H, M, P, E = 64, F = 64, M0 = 256",
                        f"rank B, H, M, P, E = {d}, F = {d}, M0 = 256")


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
@pytest.mark.parametrize("head", [64, 128])
def test_aot_default_config_no_spills(head, dtype, arch):
    from einsumc.backends.triton.aot import SMEM_LIMIT, compile_kernel
    prog = einsumc.load(_with_head_dim(head))
    r, k = compile_kernel(prog, arch, dtype=dtype)
    assert r.regs is not None and r.regs <= 255
    assert r.spill_stores == 0 and r.spill_loads == 0, f"{r.spills} B of spills"
    assert r.smem == k.metadata.shared <= SMEM_LIMIT[arch]
    assert r.mma_dots == r.dots == 4  # 2 contractions x (masked + unmasked loop body)


def test_aot_report_text():
    from einsumc.backends.triton.aot import aot_report, parse_archs
    from einsumc.backends.triton.lower import Config
    assert parse_archs("sm_90,sm_80") == [90, 80]
    with pytest.raises(EinsumcError):
        parse_archs("sm_70")
    text = aot_report(einsumc.load(EX / "fusemax/cascade5_1pass.ein"), "sm_90",
                      configs=[Config(64, 4, 2)])
    assert re.search(r"einsumc_kernel\s+sm_90\s+rows=64 w4 s2\s+\d+\s+0\s+\d+\s+232448\s+(\d)/\1 wgmma",
                     text), text
