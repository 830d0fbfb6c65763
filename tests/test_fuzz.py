"""Fuzzing the frontend: a mangled spec gives a program or an `EinsumcError`, quickly.

The seeds are the valid specs in `examples/**/*.ein` (and the two cascades of the language
contract, embedded below), with their fixed extents shrunk to at most 3. Each is mutated
deterministically: tokens deleted, duplicated, swapped or replaced; random characters (ASCII,
control bytes, unicode) inserted; truncation every few characters. Extra inputs cover empty
files, comment-only files, 100k-character lines, 10k-deep parentheses, non-UTF-8 bytes loaded
by path, CRLF line ends and a byte-order mark.

Every outcome must be success or `EinsumcError` (never another exception), within
`TIME_LIMIT` seconds. A mutant that checks is also run under the NumPy backend on tiny random
inputs (symbolic extents 3; skipped when a mutated extent grows beyond `MAX_EXTENT`), and that
run too must succeed or raise `EinsumcError`.
"""
from __future__ import annotations

import random
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import einsumc
from einsumc import EinsumcError
from einsumc.inputs import random_inputs, resolve_extents

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT = 2.0  # seconds per input (load + check, and again for the run)
MAX_EXTENT = 8
SYMBOLIC = 3

CONTRACT_3PASS = """\
# attention_3pass.ein
rank E = 64, F = 64            # fixed extents
rank M, P                      # symbolic extents, bound from the inputs at run time

input  Q[e, p], K[e, m], V[f, m]
output AV[f, p]

QK[m, p] = Q[e, p] * K[e, m] / sqrt(E)    # e is on the right only: summed away
GM[p]    = QK[m, p] :: max(m)             # reduce m with max instead of +
SN[m, p] = exp(QK[m, p] - GM[p])
SD[p]    = SN[m, p]                       # m summed away
A[m, p]  = SN[m, p] / SD[p]
AV[f, p] = A[m, p] * V[f, m]
"""

CONTRACT_1PASS = """\
# attention_1pass.ein
rank E = 64, F = 64, M0 = 64
rank M, P, M1 = M / M0

input  Q[e, p], K[e, m], V[f, m]
output AV[f, p]

BK[e, m1, m0]  = K[e, m1*M0 + m0]
BV[f, m1, m0]  = V[f, m1*M0 + m0]
RM[m1=0, p]    = -inf
RD[m1=0, p]    = 0
RNV[f, m1=0, p] = 0

BQK[m1, m0, p]   = Q[e, p] * BK[e, m1, m0]
LM[m1, p]        = BQK[m1, m0, p] :: max(m0)
RM[m1+1, p]      = max(RM[m1, p], LM[m1, p])
SLN[m1, m0, p]   = exp(BQK[m1, m0, p] - RM[m1+1, p])
SLD[m1, p]       = SLN[m1, m0, p]
SLNV[f, m1, p]   = SLN[m1, m0, p] * BV[f, m1, m0]
PRM[m1, p]       = exp(RM[m1, p] - RM[m1+1, p])
SPD[m1, p]       = RD[m1, p] * PRM[m1, p]
RD[m1+1, p]      = SLD[m1, p] + SPD[m1, p]
SPNV[f, m1, p]   = RNV[f, m1, p] * PRM[m1, p]
RNV[f, m1+1, p]  = SLNV[f, m1, p] + SPNV[f, m1, p]
AV[f, p]         = RNV[f, M1, p] / RD[M1, p]
"""


def _shrink(text: str) -> str:
    """Fixed extents at most 3 (on `rank` lines), so that runs stay tiny."""
    def line(m: re.Match) -> str:
        return re.sub(r"\b\d+\b", lambda n: str(min(int(n.group()), 3)), m.group())
    return re.sub(r"^rank\b[^\n]*", line, text, flags=re.MULTILINE)


def _seeds() -> dict[str, str]:
    seeds = {"contract_3pass": CONTRACT_3PASS, "contract_1pass": CONTRACT_1PASS}
    for p in sorted((ROOT / "examples").glob("**/*.ein")):
        seeds[f"{p.parent.name}/{p.stem}"] = p.read_text(encoding="utf-8")
    return {k: _shrink(v) for k, v in seeds.items()}


SEEDS = _seeds()
TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d*)?|::|//|<=|>=|==|!=|\n|[^\sA-Za-z0-9_]")
UNICODE = ["\u00d7", "\u2212", "\u00a0", "\u200b", "\u202e", "\ufeff", "\u0301", "\u03b1",
           "\U0001f600", "\u4e2d", "\u2028", "\x00", "\x7f", "\x1b", "\x0c", "\r", "\t", "\\"]


# ----------------------------------------------------------------------------- mutators
def _tokens(text: str) -> list[re.Match]:
    return list(TOKEN.finditer(text))


def _mutate_tokens(text: str, rng: random.Random) -> str:
    toks = _tokens(text)
    if not toks:
        return text
    op = rng.choice(("delete", "duplicate", "swap", "replace", "delete2"))
    i = rng.randrange(len(toks))
    t = toks[i]
    if op == "delete":
        return text[:t.start()] + text[t.end():]
    if op == "delete2" and i + 1 < len(toks):
        return text[:t.start()] + text[toks[i + 1].end():]
    if op == "duplicate":
        return text[:t.end()] + " " + t.group() + text[t.end():]
    if op == "swap" and i + 1 < len(toks):
        u = toks[i + 1]
        return text[:t.start()] + u.group() + text[t.end():u.start()] + t.group() + text[u.end():]
    other = rng.choice(toks).group()
    return text[:t.start()] + other + text[t.end():]


def _insert_chars(text: str, rng: random.Random, alphabet: str) -> str:
    pos = rng.randrange(len(text) + 1)
    if alphabet == "bytes":
        junk = "".join(chr(rng.randrange(256)) for _ in range(rng.randint(1, 4)))
    elif alphabet == "unicode":
        junk = "".join(rng.choice(UNICODE) if rng.random() < 0.6 else chr(rng.randrange(0x80, 0x3000))
                       for _ in range(rng.randint(1, 3)))
    else:
        junk = "".join(rng.choice("[](),:=+-*/%<>#\n 0123456789.eEmpMPwhere") for _ in range(rng.randint(1, 3)))
    return text[:pos] + junk + text[pos:]


def _mutants(name: str, text: str, family: str) -> list[str]:
    rng = random.Random(f"{name}/{family}")
    if family == "tokens":
        out = [_mutate_tokens(text, rng) for _ in range(8)]
        out += [_mutate_tokens(_mutate_tokens(text, rng), rng) for _ in range(3)]
        return out
    if family == "chars":
        return [_insert_chars(text, rng, a) for a in ("bytes", "unicode", "syntax")
                for _ in range(2)]
    if family == "truncate":
        step = max(1, len(text) // 10)
        return [text[:k] for k in range(rng.randrange(step), len(text), step)]
    raise ValueError(family)


# ----------------------------------------------------------------------------- the oracle
def _outcome(spec, name: str = "mutant.ein"):
    """Load and (if it checks) run `spec`; return a short description. Asserts the contract."""
    t0 = time.perf_counter()
    try:
        prog = einsumc.load(spec, name=name)
    except EinsumcError as exc:
        str(exc)  # rendering must work too
        dt = time.perf_counter() - t0
        assert dt < TIME_LIMIT, f"load took {dt:.2f}s"
        return "error"
    dt = time.perf_counter() - t0
    assert dt < TIME_LIMIT, f"load took {dt:.2f}s"
    printed = prog.to_source()
    again = einsumc.load(printed, name="printed.ein")
    try:
        same = again == prog
    except RecursionError:  # dataclass `==` recurses 3 frames per level (reported; ir/ is not ours)
        same = again.to_source() == printed
    assert same, f"print round trip:\n{printed}"
    t0 = time.perf_counter()
    try:
        symbolic = {r.name: SYMBOLIC for r in prog.ranks if r.extent is None}
        ext = resolve_extents(prog, symbolic)
        if any(v > MAX_EXTENT for v in ext.values()):
            return "checked (extents too large to run)"
        arrays = random_inputs(prog, symbolic)
        fn = prog.compile(target="numpy")
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            fn(**arrays, **{p: 2 for p in prog.runtime_params})
        result = "ran"
    except EinsumcError as exc:
        str(exc)
        result = "run error"
    dt = time.perf_counter() - t0
    assert dt < TIME_LIMIT, f"run took {dt:.2f}s"
    return result


def _check_all(mutants, label: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for k, m in enumerate(mutants):
        try:
            r = _outcome(m)
        except AssertionError:
            raise
        except Exception as exc:  # anything but EinsumcError is a bug
            shown = m if len(m) < 3000 else m[:1500] + "\n...\n" + m[-1500:]
            pytest.fail(f"{label} mutant #{k}: {type(exc).__name__}: {exc}\n--- spec ---\n{shown}")
        counts[r] = counts.get(r, 0) + 1
    return counts


# ----------------------------------------------------------------------------- tests
def test_seeds_check_and_run():
    """The shrunk seeds themselves are valid and run (else the fuzzing proves little)."""
    assert len(SEEDS) >= 2
    for name, text in SEEDS.items():
        assert _outcome(text, name) == "ran", name


@pytest.mark.parametrize("family", ["tokens", "chars", "truncate"])
@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_mutants(seed: str, family: str):
    _check_all(_mutants(seed, SEEDS[seed], family), f"{seed}/{family}")


def test_mutant_count():
    n = sum(len(_mutants(s, SEEDS[s], f)) for s in SEEDS for f in ("tokens", "chars", "truncate"))
    assert n >= 300, n


BASE = SEEDS["contract_3pass"]
SPECIAL = {
    "empty": "",
    "newline": "\n",
    "whitespace": " \t \n\n   \n\t",
    "only_comments": "# nothing here\n# at all\n   # indented comment\n",
    "comment_no_newline": "# x",
    "crlf": BASE.replace("\n", "\r\n"),
    "cr_only": BASE.replace("\n", "\r"),
    "bom": "\ufeff" + BASE,
    "nul": BASE.replace("GM[p]", "GM[p]\x00", 1),
    "leading_indent": "    " + BASE,
    "continuation_first_line": "  rank E = 4\nrank M\ninput X[e, m]\noutput Y[m]\nY[m] = X[e, m]\n",
    "long_line_expr": BASE.replace("AV[f, p] = A[m, p] * V[f, m]",
                                   "AV[f, p] = A[m, p] * V[f, m]" + " + A[m, p] * V[f, m]" * 2000),
    "long_sum_ok": BASE.replace("AV[f, p] = A[m, p] * V[f, m]",
                                "AV[f, p] = A[m, p] * V[f, m]" + " + A[m, p] * V[f, m]" * 300),
    "long_line_garbage": BASE + "X" * 100_000 + "\n",
    "long_comment": BASE + "#" + "c" * 100_000 + "\n",
    "long_name": BASE.replace("GM", "G" * 100_000),
    "long_number": BASE.replace("sqrt(E)", "1" + "0" * 100_000),
    "long_float": BASE.replace("sqrt(E)", "0." + "3" * 100_000),
    "deep_parens": BASE.replace("exp(QK[m, p] - GM[p])",
                                "(" * 10_000 + "exp(QK[m, p] - GM[p])" + ")" * 10_000),
    "deep_parens_continued": BASE.replace("exp(QK[m, p] - GM[p])",
                                          "\n ".join(["("] * 10_000) + "exp(QK[m, p] - GM[p])"
                                          + ")" * 10_000),
    "deep_unbalanced": BASE + "X = " + "(" * 10_000 + "\n",
    "deep_brackets": BASE + "X = Q[" * 10_000 + "\n",
    "deep_unary": BASE.replace("exp(QK[m, p] - GM[p])", "-" * 10_000 + "exp(QK[m, p] - GM[p])"),
    "deep_not": BASE + "X[m, p] = QK[m, p] where " + "not " * 10_000 + "m < p\n",
    "many_lines": BASE + "".join(f"T{i}[p] = GM[p] + {i}\n" for i in range(500)),
    "comment_parens": "# " + "(" * 1000 + "\n" + BASE,
    "many_ranks": "rank " + ", ".join(f"R{i}" for i in range(3000)) + "\n",
    "huge_extent": "rank E = 99999999999999999999 * 99999999999999999999\nrank M\n"
                   "input X[e, m]\noutput Y[m]\nY[m] = X[e, m]\n",
    "extent_div_zero": "rank E = 4 / 0\nrank M\ninput X[e, m]\noutput Y[m]\nY[m] = X[e, m]\n",
    "extent_inf": "rank E = inf\nrank M\ninput X[e, m]\noutput Y[m]\nY[m] = X[e, m]\n",
    "extent_symbolic_div_zero": "rank M, E = M / (M - M)\ninput X[e, m]\noutput Y[m]\n"
                                "Y[m] = X[e, m]\n",
    "extent_zero": "rank E = 0\nrank M\ninput X[e, m]\noutput Y[m]\nY[m] = X[e, m] :: max(e)\n",
    "extent_mod_zero": "rank E = 4 % 0\nrank M\ninput X[e, m]\noutput Y[m]\nY[m] = X[e, m]\n",
    "extent_floordiv_zero": "rank E = 4 // 0\nrank M\ninput X[e, m]\noutput Y[m]\nY[m] = X[e, m]\n",
    "param_div_zero": "rank M\nparam s = 1 / 0\ninput X[m]\noutput Y\nY = X[m] * s\n",
    "param_log_zero": "rank M\nparam s = log(0)\ninput X[m]\noutput Y\nY = X[m] * s\n",
    "param_sqrt_neg": "rank M\nparam s = sqrt(0 - 1)\ninput X[m]\noutput Y\nY = X[m] * s\n",
    "param_in_index_float": "rank M\nparam s = 0.5\ninput X[m]\noutput Y[m]\nY[m] = X[m + s]\n",
    "param_inf_in_filter": "rank M\nparam s = inf\ninput X[m]\noutput Y[m]\nY[m] = X[m] where m < s\n",
    "index_huge_offset": "rank M\ninput X[m]\noutput Y[m]\nY[m] = X[m + 99999999999999999999]\n",
    "index_huge_coeff": "rank M\ninput X[m]\noutput Y[m]\nY[m] = X[99999999999999999999 * m]\n",
    "filter_division": "rank M\ninput X[m]\noutput Y[m]\nY[m] = X[m] where m / 2 < 1\n",
    "scalar_only": "output Y\nY = 1\n",
    "no_output": "rank M\ninput X[m]\n",
    "unicode_names": BASE.replace("GM", "G\u00e9M"),
}


# Regressions: index_huge_coeff, param_inf_in_filter, param_log_zero, param_sqrt_neg and
# filter_division used to escape the NumPy runtime as OverflowError / ValueError /
# UFuncTypeError instead of EinsumcError (found by this file, fixed in the runtime).
@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_special_inputs(name: str):
    _check_all([SPECIAL[name]], name)


EXPECTED = {
    "bom": "ran", "crlf": "ran", "leading_indent": "ran", "comment_parens": "ran",
    "long_sum_ok": "ran", "long_comment": "ran", "scalar_only": "ran",
    "continuation_first_line": "ran",
    "nul": "error", "deep_parens": "error", "deep_parens_continued": "error",
    "deep_brackets": "error", "deep_unary": "error", "deep_not": "error",
    "long_line_expr": "error", "long_line_garbage": "error", "extent_div_zero": "error",
    "extent_mod_zero": "error", "extent_floordiv_zero": "error", "extent_inf": "error",
    "extent_symbolic_div_zero": "error", "huge_extent": "checked (extents too large to run)",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_special_outcome(name: str):
    assert _outcome(SPECIAL[name]) == EXPECTED[name]


@pytest.mark.parametrize("name", ["deep_parens", "deep_parens_continued", "deep_brackets",
                                  "deep_unary", "deep_not", "long_line_expr"])
def test_too_deep_is_located(name: str):
    """Nesting errors point at the statement, not at the top of the file."""
    with pytest.raises(EinsumcError) as info:
        einsumc.load(SPECIAL[name])
    d = info.value.diagnostics[0]
    assert d.line > 1 and "nested" in d.message


def test_empty_and_comment_only_files_are_errors_or_empty_programs(tmp_path):
    for text in ("", "# only a comment\n", "\n\n\n"):
        p = tmp_path / "x.ein"
        p.write_text(text)
        _check_all([str(p)], repr(text))


NON_UTF8 = [
    b"\xff\xfe\x00\x00",
    BASE.encode() + b"\n\x80\x81\x82\n",
    BASE.encode().replace(b"GM[p]", b"G\xc3M[p]", 1),
    "\ufeff".encode("utf-16") + BASE.encode("utf-16-le"),
    BASE.encode("latin-1", errors="replace").replace(b"#", b"\xa7", 1),
    bytes(range(256)),
]


@pytest.mark.parametrize("k", range(len(NON_UTF8)))
def test_non_utf8_file(tmp_path, k):
    p = tmp_path / f"bad{k}.ein"
    p.write_bytes(NON_UTF8[k])
    with pytest.raises(EinsumcError) as info:
        einsumc.load(str(p))
    d = info.value.diagnostics[0]
    assert "UTF-8" in d.message or d.line is not None
    str(info.value)


def test_random_bytes_files(tmp_path):
    rng = random.Random(1234)
    blobs = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))) for _ in range(20)]
    blobs += [BASE.encode()[:k] + bytes([rng.randrange(128, 256)]) + BASE.encode()[k:]
              for k in sorted(rng.sample(range(len(BASE)), 10))]
    for k, blob in enumerate(blobs):
        p = tmp_path / f"blob{k}.ein"
        p.write_bytes(blob)
        _check_all([str(p)], f"blob{k}")
        _check_all([blob], f"blob{k} as bytes")
