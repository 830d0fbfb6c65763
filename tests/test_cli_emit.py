"""The command line (in-process) and the standalone NumPy module."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import einsumc
from einsumc.cli import main
from einsumc.inputs import random_inputs
from conftest import EXAMPLES, ROOT

C5 = ROOT / "examples/fusemax/cascade5_1pass.ein"
SINK = ROOT / "examples/attention/learnable_sink_1pass.ein"


def test_check_ok(capsys):
    assert main(["check", str(C5)]) == 0
    assert "ok" in capsys.readouterr().out


def test_check_error_has_location_and_no_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.ein"
    bad.write_text("rank M\ninput A[m]\noutput Z[m]\nZ[m] = B[m]\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:4:8: error: undeclared tensor 'B'" in err
    assert "Traceback" not in err and "^" in err


def test_missing_file(capsys):
    assert main(["check", "/nonexistent/x.ein"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_run_prints_shapes_checksums_and_compares(tmp_path, capsys):
    out = tmp_path / "o.npz"
    assert main(["run", str(C5), "--shape", "M=128,P=20", "--compare", "numpy",
                 "--save", str(out)]) == 0
    text = capsys.readouterr().out
    assert "AV: shape (64, 20) float32" in text and "sha256" in text
    assert "max abs err 0.000e+00" in text
    assert np.load(out)["AV"].shape == (64, 20)


def test_run_with_inputs_file_and_params(tmp_path, capsys):
    prog = einsumc.load(SINK)
    inputs = random_inputs(prog, {"B": 1, "H": 2, "M": 70, "P": 9}, seed=1)
    f = tmp_path / "in.npz"
    np.savez(f, **inputs)
    assert main(["run", str(SINK), "--inputs", str(f), "--param", "s0=0.5"]) == 0
    assert "shape (1, 2, 64, 9)" in capsys.readouterr().out
    assert main(["run", str(SINK), "--inputs", str(f)]) == 1
    assert "--param s0=VALUE" in capsys.readouterr().err


def test_run_bad_shape_and_target(capsys):
    assert main(["run", str(C5), "--shape", "M=100,P=4"]) == 1  # M1 = M / M0 with M0 = 64
    err = capsys.readouterr().err
    assert "cascade5_1pass.ein:" in err and "not" in err
    assert main(["run", str(C5), "--shape", "M=128,P=4", "--target", "bogus"]) == 1
    assert "unknown target 'bogus'; available targets: numpy, spatial, triton" in \
        capsys.readouterr().err
    assert main(["run", str(C5), "--shape", "X=3"]) == 1
    assert "not a rank" in capsys.readouterr().err


def test_graph_formats(capsys):
    assert main(["graph", str(C5), "--format", "json"]) == 0
    assert '"schema": 1' in capsys.readouterr().out
    assert main(["graph", str(C5)]) == 0
    assert capsys.readouterr().out.startswith("digraph")


def _import(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_standalone_module_matches_and_is_deterministic(path, tmp_path):
    prog = einsumc.load(path)
    text = prog.emit("numpy")
    assert text == einsumc.load(path).emit("numpy")  # byte-identical
    imports = [ln.split()[1] for ln in text.splitlines() if ln.startswith(("import ", "from "))]
    # numpy and the standard library only: no einsumc, no torch
    assert "numpy" in imports
    assert set(imports) <= {"__future__", "math", "numpy", "os", "copy", "concurrent.futures"}
    f = tmp_path / "mod.py"
    f.write_text(text)
    mod = _import(f)
    shapes = {r.name: 5 for r in prog.ranks if r.extent is None}
    if "M0" in {r.name for r in prog.ranks} and "/" in prog.to_source().split("M1 =")[-1][:12]:
        shapes["M"] = 128
    try:
        inputs = random_inputs(prog, shapes)
    except einsumc.EinsumcError:
        pytest.skip("needs specific extents")
    params = {p: 0.5 for p in prog.runtime_params}
    if "W" in params:
        params["W"] = 3
    try:
        ref = prog.compile()(**inputs, **params)
    except einsumc.EinsumcError:
        pytest.skip("extents do not fit this example")
    got = mod.cascade(**inputs, **params)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])


def test_compile_to_file_and_cli_module(tmp_path):
    out = tmp_path / "c5.py"
    assert main(["compile", str(C5), "--target", "numpy", "-o", str(out)]) == 0
    mod = _import(out)
    with pytest.raises(ValueError, match=r"cascade5_1pass.ein:\d+:\d+: error"):
        mod.cascade(Q=np.zeros((64, 3), np.float32), K=np.zeros((64, 100), np.float32),
                    V=np.zeros((64, 100), np.float32))


def test_python_m_einsumc():
    r = subprocess.run([sys.executable, "-m", "einsumc", "check", str(C5)], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "ok" in r.stdout


def test_api_errors_carry_locations():
    with pytest.raises(einsumc.EinsumcError) as exc:
        einsumc.load("rank M\ninput A[m]\noutput Z[m]\nZ[m] = A[m] +\n", name="x.ein")
    d = exc.value.diagnostics[0]
    assert (d.file, d.line, d.severity) == ("x.ein", 4, "error")
    assert str(exc.value).startswith("x.ein:4:")
    fn = einsumc.load(C5).compile()
    with pytest.raises(einsumc.EinsumcError) as exc:
        fn(Q=np.zeros((64, 3), np.float32), K=np.zeros((64, 100), np.float32),
           V=np.zeros((64, 100), np.float32))
    d = exc.value.diagnostics[0]
    assert d.line == 13 and "M1" in d.message  # `rank M, P, M1 = M / M0`


def test_bench_runs_and_checks_against_sdpa(capsys):
    spec = ROOT / "examples/attention/mha_causal_1pass.ein"
    assert main(["bench", str(spec), "--shape", "B=1,H=2,M=96,P=96", "--causal"]) == 0
    out = capsys.readouterr().out
    assert "torch SDPA (CPU)" in out and "naive NumPy" in out and "machine:" in out
    err = float(out.split("max abs err vs sdpa: ")[1].split()[0])
    assert err < 1e-5


def test_run_triton_target_compares_with_numpy(capsys):
    with pytest.warns(Warning, match="interpreter"):  # the one-line notice on a CPU machine
        assert main(["run", str(C5), "--shape", "M=128,P=5", "--target", "triton",
                     "--compare", "numpy"]) == 0
    out = capsys.readouterr().out
    err = float(out.split("max abs err ")[1].split(",")[0])
    assert err < 1e-4
