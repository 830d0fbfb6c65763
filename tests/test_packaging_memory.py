"""Packaging (the wheel holds `einsumc` only) and the NumPy backend's bounded memory."""
from __future__ import annotations

import glob
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

import einsumc
from conftest import ROOT


def test_wheel_holds_einsumc_only(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", str(ROOT), "-w", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (whl,) = glob.glob(str(tmp_path / "einsumc-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    assert "einsumc/grammar/ein.lark" in names
    assert "einsumc/backends/__init__.py" in names
    assert "einsumc/backends/numpy/runtime.py" in names
    assert all(n.startswith(("einsumc/", "einsumc-")) for n in names), \
        [n for n in names if not n.startswith(("einsumc/", "einsumc-"))]
    top = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith("top_level.txt")))
    assert top.decode().split() == ["einsumc"]


def test_no_top_level_backends_or_grammar_package():
    code = ("import importlib.util as u, einsumc.backends, einsumc.grammar; "
            "assert u.find_spec('backends') is None and u.find_spec('grammar') is None")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr


def _peak(prog, m, p, h=2):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, h, 64, p), dtype=np.float32)
    k = rng.standard_normal((1, h, 64, m), dtype=np.float32)
    v = rng.standard_normal((1, h, 64, m), dtype=np.float32)
    fn = prog.compile()
    tracemalloc.start()
    try:
        fn(Q=q, K=k, V=v)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", ["mha_1pass.ein", "mha_causal_1pass.ein"])
def test_one_pass_memory_does_not_grow_with_m(name):
    prog = einsumc.load(ROOT / "examples/attention" / name)
    small = _peak(prog, 1024, 512)
    large = _peak(prog, 8192, 512)
    # the running state and one K/V tile per query chunk: independent of M
    assert large < 1.25 * small + (1 << 20), (small, large)
    # and far below the (M, P) score matrix the naive form would hold
    assert large < 8192 * 512 * 4 * 2 / 4


def test_three_pass_memory_is_bounded_by_query_chunks():
    prog = einsumc.load(ROOT / "examples/attention/mha.ein")
    peak = _peak(prog, 4096, 4096, h=1)
    assert peak < 4096 * 4096 * 4 / 2  # below one full score matrix
