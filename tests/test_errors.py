"""Every bad spec gets a precise diagnostic: `file:line:col: error: message`, never a traceback.

The corpus `tests/errors/*.ein` holds one mistake per file (a few files hold several
independent ones). Each file begins with one or more header lines

    # expect: LINE:COL: <substring of the message>

and loading it must raise `EinsumcError` whose errors include, for every header line, one at
that line and column whose message contains the substring. Run-time problems (shapes that
contradict the declarations, missing or unexpected arguments, bad param values) are checked
through the Python API below; they too must be `EinsumcError`s pointing into the spec.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import einsumc
from einsumc import EinsumcError
from einsumc.cli import main

ERRORS = Path(__file__).resolve().parent / "errors"
CORPUS = sorted(ERRORS.glob("*.ein"))
EXPECT = re.compile(r"^#\s*expect:\s*(\d+):(\d+):\s*(.+?)\s*$")
CARET = re.compile(r"^\s*\^~*\s*$", re.MULTILINE)


def expectations(path: Path) -> list[tuple[int, int, str]]:
    """The `# expect: LINE:COL: text` lines of the file's leading comment block."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m = EXPECT.match(line)
        if m:
            out.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    return out


def load_error(spec, **kw) -> EinsumcError:
    with pytest.raises(EinsumcError) as info:
        einsumc.load(spec, **kw)
    return info.value


def errors_of(exc: EinsumcError):
    return [d for d in exc.diagnostics if d.severity == "error"]


def describe(exc: EinsumcError) -> str:
    return "\n".join(f"  {d.line}:{d.col}: {d.message}" for d in exc.diagnostics)


# ----------------------------------------------------------------------------- the corpus
def test_corpus_is_large_and_annotated():
    assert len(CORPUS) >= 45
    for path in CORPUS:
        assert expectations(path), f"{path.name} has no `# expect: LINE:COL: text` header"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus(path: Path):
    exc = load_error(str(path))
    errs = errors_of(exc)
    assert errs, "an EinsumcError with no error diagnostic"
    for line, col, text in expectations(path):
        hits = [d for d in errs if d.line == line and d.col == col and text in d.message]
        assert hits, (f"{path.name}: expected an error at {line}:{col} containing {text!r}; "
                      f"got:\n{describe(exc)}")
    for d in errs:  # every error points into this file
        assert d.file == str(path) and d.line is not None and d.col is not None, d
    rendered = str(exc)
    line, col, _ = expectations(path)[0]
    assert f"{path}:{line}:{col}: error:" in rendered
    assert CARET.search(rendered), rendered


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_from_text(path: Path):
    """Loading the same spec as text (not a path) gives the same locations."""
    exc = load_error(path.read_text(encoding="utf-8"), name="spec.ein")
    got = {(d.line, d.col) for d in errors_of(exc)}
    for line, col, _ in expectations(path):
        assert (line, col) in got
    assert all(d.file == "spec.ein" for d in errors_of(exc))


def test_several_errors_in_one_run():
    """Independent errors are all collected and reported together, in source order."""
    exc = load_error(str(ERRORS / "multiple_errors.ein"))
    errs = errors_of(exc)
    assert len(errs) == 3, describe(exc)
    assert [d.line for d in errs] == sorted(d.line for d in errs)
    assert len({d.line for d in errs}) == 3
    rendered = str(exc)
    assert rendered.count(": error: ") == 3
    assert len(CARET.findall(rendered)) == 3


def test_several_declaration_errors_in_one_run():
    exc = load_error(str(ERRORS / "multiple_errors_decls.ein"))
    assert len(errors_of(exc)) == 3, describe(exc)


def test_rendering_has_location_source_line_and_caret():
    path = ERRORS / "undeclared_tensor.ein"
    exc = load_error(str(path))
    text = str(exc)
    first = text.splitlines()[0]
    assert re.match(re.escape(str(path)) + r":\d+:\d+: error: ", first), first
    lines = text.splitlines()
    caret_at = next(i for i, ln in enumerate(lines) if CARET.match(ln))
    src_line = lines[caret_at - 1]
    d = errors_of(exc)[0]
    assert src_line.strip() == path.read_text().splitlines()[d.line - 1].strip()
    # the caret sits under the reported column
    assert lines[caret_at].index("^") - 2 == d.col - 1
    assert src_line[2 + d.col - 1:].startswith("Kx")


def test_no_follow_on_errors():
    """A rejected statement does not produce a second, misleading error at its uses."""
    for name in ("recurrence_without_init", "recurrence_init_at_one", "recurrence_offset_two",
                 "recurrence_lhs_minus_one", "output_other_indices", "lhs_repeated_var",
                 "lhs_index_expression"):
        exc = load_error(str(ERRORS / f"{name}.ein"))
        assert len(errors_of(exc)) == 1, f"{name}:\n{describe(exc)}"


# ----------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_cli_check_fails_cleanly(path: Path, capsys):
    rc = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in out + err
    assert "internal error" not in out + err
    line, col, _ = expectations(path)[0]
    assert f"{path}:{line}:{col}: error:" in err


def test_cli_check_missing_file(capsys, tmp_path):
    rc = main(["check", str(tmp_path / "nope.ein")])
    out, err = capsys.readouterr()
    assert rc == 1 and "cannot read" in err and "Traceback" not in err


def test_cli_run_reports_extent_relation(capsys, tmp_path):
    spec = tmp_path / "tiles.ein"
    spec.write_text(TILED)
    rc = main(["run", str(spec), "--shape", "M=6,P=3"])
    out, err = capsys.readouterr()
    assert rc == 1 and "Traceback" not in out + err
    assert f"{spec}:2:12: error:" in err and "M1" in err


def test_cli_check_ok(capsys, tmp_path):
    spec = tmp_path / "ok.ein"
    spec.write_text(TILED)
    assert main(["check", str(spec)]) == 0
    assert "ok" in capsys.readouterr().out


# ----------------------------------------------------------------------------- run time
TILED = """\
rank E = 4, F = 4, M0 = 4
rank M, P, M1 = M / M0
input  Q[e, p], K[e, m], V[f, m]
output AV[f, p]
BK[e, m1, m0]  = K[e, m1*M0 + m0]
BV[f, m1, m0]  = V[f, m1*M0 + m0]
S[m1, m0, p]   = Q[e, p] * BK[e, m1, m0]
AV[f, p]       = S[m1, m0, p] * BV[f, m1, m0]
"""

FILTERED = """\
rank E = 4, F = 4
rank M, P
param W
input  Q[e, p], K[e, m], V[f, m]
output AV[f, p]
S[m, p]  = Q[e, p] * K[e, m] where m <= p + W
AV[f, p] = S[m, p] * V[f, m]
"""


def arrays(E=4, F=4, M=8, P=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(Q=rng.standard_normal((E, P)).astype(np.float32),
                K=rng.standard_normal((E, M)).astype(np.float32),
                V=rng.standard_normal((F, M)).astype(np.float32))


def run_error(spec: str, **kwargs) -> EinsumcError:
    fn = einsumc.load(spec, name="spec.ein").compile(target="numpy")
    with pytest.raises(EinsumcError) as info:
        fn(**kwargs)
    return info.value


def the_error(exc: EinsumcError):
    errs = errors_of(exc)
    assert len(errs) == 1, describe(exc)
    return errs[0]


def test_runtime_ok():
    out = einsumc.load(TILED).compile(target="numpy")(**arrays())
    assert out["AV"].shape == (4, 3)


def test_runtime_extent_not_divisible_points_at_rank_declaration():
    exc = run_error(TILED, **arrays(M=6))
    d = the_error(exc)
    assert (d.line, d.col) == (2, 12), describe(exc)  # `M1 = M / M0` in `rank M, P, M1 = M / M0`
    assert "M1" in d.message and "6" in d.message
    assert "spec.ein:2:12: error:" in str(exc) and CARET.search(str(exc))


def test_runtime_fixed_extent_contradicts_shape():
    a = arrays()
    a["Q"] = np.zeros((5, 3), np.float32)
    a["K"] = np.zeros((5, 8), np.float32)
    d = the_error(run_error(TILED, **a))
    assert (d.line, d.col) == (1, 6)  # `E = 4`
    assert "5" in d.message and "4" in d.message


def test_runtime_inputs_disagree_on_extent():
    a = arrays()
    a["V"] = a["V"][:, :4]
    d = the_error(run_error(TILED, **a))
    assert d.line == 3 and "rank M" in d.message


def test_runtime_wrong_ndim():
    a = arrays()
    a["Q"] = a["Q"][0]
    d = the_error(run_error(TILED, **a))
    assert (d.line, d.col) == (3, 8) and "'Q'" in d.message and "axes" in d.message


def test_runtime_missing_input():
    a = arrays()
    del a["V"]
    d = the_error(run_error(TILED, **a))
    assert (d.line, d.col) == (3, 26) and "missing input 'V'" in d.message


def test_runtime_unknown_keyword():
    d = the_error(run_error(TILED, **arrays(), W=1))
    assert "'W'" in d.message


def test_runtime_missing_param():
    d = the_error(run_error(FILTERED, **arrays()))
    assert (d.line, d.col) == (3, 7) and "missing param 'W'" in d.message


def test_runtime_non_integer_param_in_filter():
    d = the_error(run_error(FILTERED, **arrays(), W=1.5))
    assert (d.line, d.col) == (3, 7) and "integer" in d.message


def test_runtime_integer_param_in_filter_ok():
    out = einsumc.load(FILTERED).compile(target="numpy")(**arrays(), W=2)
    assert np.isfinite(out["AV"]).all()


# Regressions: bad values for run-time arguments used to escape the NumPy runtime as plain
# ValueError / TypeError / OverflowError (found while writing this file, fixed in the runtime).
BAD_VALUES = [
    pytest.param(dict(W="abc"), id="param-str"),
    pytest.param(dict(W=None), id="param-none"),
    pytest.param(dict(W=float("nan")), id="param-nan-in-filter"),
    pytest.param(dict(W=float("inf")), id="param-inf-in-filter"),
    pytest.param(dict(W=1, Q="hello"), id="input-str"),
]


@pytest.mark.parametrize("extra", BAD_VALUES)
def test_runtime_bad_argument_values(extra):
    kwargs = {**arrays(), **extra}
    fn = einsumc.load(FILTERED, name="spec.ein").compile(target="numpy")
    with pytest.raises(EinsumcError):
        fn(**kwargs)
