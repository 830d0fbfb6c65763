"""Random cascades with absent points everywhere, against an independent point-by-point reference.

`tests/test_random_cascades.py` checks filters on the last Einsum against a vectorized
reference. Here absent points are made and consumed anywhere in a cascade, and the reference
is written from the six absent-point rules of the language contract
(reference/ein-language.md §3), one scalar at a time:

  * `reference()` walks every point of each Einsum's full iteration space (the left-hand
    variables, then the other variables of the right-hand side, then variables that occur
    only in the filter) in plain Python floats (IEEE double, no NumPy arithmetic, nothing
    from einsumc). Every tensor is a dense array with an explicit presence mask.
  * Rule 1: a point failing the `where` filter does not exist; an access whose (affine)
    index falls outside the tensor's extent reads absent.
  * Rule 2: reductions (the implicit `+` over the unannotated reduced variables first, then
    each `:: op(vars)` in the written order) fold the present values only; a group with none
    is absent (never 0, -inf or +inf).
  * Rule 3: `+`, `max(a, b)`, `min(a, b)` are unions (an absent operand is ignored); `-`, `*`,
    `/`, unary minus and `exp` are intersections (absent if any operand is).
  * Rule 4: `x / 0` is 0 for every `x` (inf, NaN and 0 included).
  * Rule 5: `(-inf) - (-inf)` is -inf (so `exp` of it is 0).
  * Rule 6: absent output points read as 0.
  * Everything else is IEEE (docs/language.md §4.4: `inf - inf` and `0 * inf` are NaN);
    `max`/`min` (map and reduction) propagate NaN as IEEE 754-2019 maximum/minimum and
    NumPy do.

The strategy draws 2-5 Einsums over 2-3 ranks with extents 1..6: `where` filters (affine
comparisons of rank variables and extents under `and`/`or`/`not`) on any Einsum, filter-only
variables (reduced), right-hand sides mixing `+ - * /`, unary minus, `max`, `min`, `exp`,
literals (`inf` too), rank variables and extents as values, and accesses whose indices are
shifted (`A[i + 1, j]`, `A[i - 1, j]`), reversed (`A[I - 1 - i, j]`) or constant (`A[0, j]`,
`A[I, j]`: wholly absent); implicit `+` and `:: max/min/sum(...)` reductions; a
softmax-like template (`MX = X :: max(..)`, then `exp(X - MX)`) for rule 5; intermediates
that are also outputs. Inputs are `f64` with dyadic values (sums and products are exact) and,
in some examples, zeros, inf and -inf. Outputs must agree to a tight tolerance (rtol 1e-9),
with the same NaN and ±inf positions.

Runtime: ~10 s by default (500 examples, derandomized); `EINSUMC_ABSENT_EXAMPLES=2000` runs
a longer hunt.

The hunt (about 50,000 examples while writing it) found three bugs of the NumPy backend's
fast path for a sum of products (a summed variable no factor carries counted once; NaN of
0 * inf lost; `a / (c / b)` rewritten as `a * b / c` against rule 4), since fixed: their
minimal reproducers are regression tests at the end of this file.
"""
from __future__ import annotations

import collections
import itertools
import math
import os
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einsumc

RANKS = ("I", "J", "K")
INPUTS = ("A", "B", "C")
MAX_EXAMPLES = int(os.environ.get("EINSUMC_ABSENT_EXAMPLES", "500"))

# ----------------------------------------------------------------------------- the model
# An affine form (index or filter operand) is (terms, const, exts): sum of coef*var over
# `terms` ((coef, var), ...), plus the integer `const`, plus sum of coef*extent over `exts`
# ((coef, RANK), ...).
#
# Expressions are tuples:
#   ("acc", tensor, (affine, ...))   a read, one affine index per axis of the tensor
#   ("num", x)                       a literal (x >= 0; inf allowed)
#   ("var", v) / ("ext", R)          a rank variable / an extent used as a value
#   ("+" | "-" | "*" | "/" | "max" | "min", a, b),  ("neg", a),  ("exp", a)
# Filters: ("cmp", op, affine, affine), ("and" | "or", p, q), ("not", p).


def ident(v: str):
    return (((1, v),), 0, ())


@dataclass
class Einsum:
    name: str
    lhs: tuple[str, ...]
    rhs: tuple
    annotations: tuple = ()  # ((op, (vars...)), ...) in the written order
    filter: tuple | None = None


@dataclass
class Cascade:
    extents: dict[str, int]
    inputs: dict[str, tuple[str, ...]]
    einsums: list[Einsum]
    outputs: tuple[str, ...] = ()  # default: the last Einsum

    def __post_init__(self):
        if not self.outputs:
            self.outputs = (self.einsums[-1].name,)

    def axes(self, tensor: str) -> tuple[str, ...]:
        if tensor in self.inputs:
            return self.inputs[tensor]
        return next(e.lhs for e in self.einsums if e.name == tensor)

    def ext(self, v: str) -> int:
        return self.extents[v.upper()]

    def source(self) -> str:
        lines = ["rank " + ", ".join(f"{r} = {n}" for r, n in self.extents.items())]
        lines.append("input  " + ", ".join(f"{t}{_idx(v)} : f64" for t, v in self.inputs.items()))
        lines.append("output " + ", ".join(f"{t}{_idx(self.axes(t))} : f64" for t in self.outputs))
        for e in self.einsums:
            s = f"{e.name}{_idx(e.lhs)} = {expr_text(e.rhs)}"
            if e.annotations:
                s += " :: " + ", ".join(f"{op}({', '.join(vs)})" for op, vs in e.annotations)
            if e.filter is not None:
                s += " where " + pred_text(e.filter)
            lines.append(s)
        return "\n".join(lines) + "\n"


def _idx(vs) -> str:
    return f"[{', '.join(vs)}]" if vs else ""


def lin_text(lin) -> str:
    terms, const, exts = lin
    parts = [(c, v) for c, v in terms] + [(c, r) for c, r in exts]
    out = ""
    for c, name in parts:
        mag = name if abs(c) == 1 else f"{abs(c)}*{name}"
        out += (("- " if c < 0 else "+ ") if out else ("-" if c < 0 else "")) + mag + " "
    if const or not out:
        out += (("- " if const < 0 else "+ ") + str(abs(const))) if out else str(const)
    return out.strip()


def expr_text(x) -> str:
    op = x[0]
    if op == "acc":
        return x[1] + _idx([lin_text(i) for i in x[2]])
    if op == "num":
        return "inf" if math.isinf(x[1]) else repr(x[1])
    if op in ("var", "ext"):
        return x[1]
    if op in ("+", "-", "*", "/"):
        return f"({expr_text(x[1])} {op} {expr_text(x[2])})"
    if op == "neg":
        return f"(-{expr_text(x[1])})"
    return f"{op}({', '.join(expr_text(a) for a in x[1:])})"


def pred_text(p) -> str:
    if p[0] == "cmp":
        return f"{lin_text(p[2])} {p[1]} {lin_text(p[3])}"
    if p[0] == "not":
        return f"not ({pred_text(p[1])})"
    return f"({pred_text(p[1])}) {p[0]} ({pred_text(p[2])})"


def lin_vars(lin) -> list[str]:
    return [v for c, v in lin[0] if c]


def expr_vars(x) -> list[str]:
    op = x[0]
    if op == "acc":
        out = [v for i in x[2] for v in lin_vars(i)]
    elif op == "var":
        out = [x[1]]
    elif op in ("num", "ext"):
        out = []
    else:
        out = [v for a in x[1:] for v in expr_vars(a)]
    return list(dict.fromkeys(out))


def pred_vars(p) -> list[str]:
    if p is None:
        return []
    if p[0] == "cmp":
        return lin_vars(p[2]) + lin_vars(p[3])
    return [v for q in p[1:] for v in pred_vars(q)]


def space_of(e: Einsum) -> list[str]:
    """The iteration space: the LHS, then the right-hand side's variables, then the filter's."""
    return list(dict.fromkeys(list(e.lhs) + expr_vars(e.rhs) + pred_vars(e.filter)))


# ----------------------------------------------------------------------------- the reference
ABSENT = None  # an absent scalar


def _sub(a: float, b: float) -> float:
    if a == -math.inf and b == -math.inf:
        return -math.inf  # rule 5
    return a - b


def _div(a: float, b: float) -> float:
    return 0.0 if b == 0 else a / b  # rule 4 (also inf / 0, NaN / 0)


def _exp(a: float) -> float:
    try:
        return math.exp(a)
    except OverflowError:
        return math.inf


def _max(a: float, b: float) -> float:
    return math.nan if (math.isnan(a) or math.isnan(b)) else max(a, b)


def _min(a: float, b: float) -> float:
    return math.nan if (math.isnan(a) or math.isnan(b)) else min(a, b)


_INTERSECT2 = {"-": _sub, "*": lambda a, b: a * b, "/": _div}
_UNION2 = {"+": lambda a, b: a + b, "max": _max, "min": _min}
_FOLD = {"sum": lambda a, b: a + b, "max": _max, "min": _min, "prod": lambda a, b: a * b}
_CMP = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b}


@dataclass
class Ref:
    outputs: dict[str, np.ndarray]  # rule 6 applied
    present: dict[str, np.ndarray]  # every tensor's presence mask
    values: dict[str, np.ndarray]   # every tensor's values (0 where absent)
    scale: float                    # the largest finite magnitude met on the way (>= 1)
    nan_born: set                   # (Einsum, op) where IEEE made a NaN of non-NaN operands
    events: collections.Counter     # how often each rule was exercised (for the hunt's stats)
    unread: dict                    # Einsum -> variables met only in parts absent everywhere


def lin_value(c: Cascade, form, env) -> int:
    terms, const, exts = form
    return (sum(cf * env[v] for cf, v in terms) + const
            + sum(cf * c.extents[r] for cf, r in exts))


def holds(c: Cascade, p, env) -> bool:
    """Whether the filter `p` holds at the point `env` (rank variable -> coordinate)."""
    if p[0] == "cmp":
        return _CMP[p[1]](lin_value(c, p[2], env), lin_value(c, p[3], env))
    if p[0] == "not":
        return not holds(c, p[1], env)
    if p[0] == "and":
        return holds(c, p[1], env) and holds(c, p[2], env)
    return holds(c, p[1], env) or holds(c, p[2], env)


def reference(c: Cascade, arrays: dict[str, np.ndarray]) -> Ref:
    """Evaluate the cascade point by point; every tensor is (values, presence)."""
    vals: dict[str, np.ndarray] = {}
    pres: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        vals[name] = np.array(a, dtype=np.float64)
        pres[name] = np.ones(np.shape(a), bool)
    scale = 1.0
    nan_born: set[tuple[str, str]] = set()
    events: collections.Counter = collections.Counter()
    unread: dict[str, set] = {}
    seen_present: set[int] = set()  # ids of the expression nodes that were present somewhere
    here = [""]  # the Einsum being evaluated

    def born(op: str, x: float, *args: float) -> float:
        if math.isnan(x) and not any(math.isnan(a) for a in args):
            nan_born.add((here[0], op))
        return x

    def note(x: float):
        nonlocal scale
        if math.isfinite(x):
            scale = max(scale, abs(x))

    def lin(form, env) -> int:
        return lin_value(c, form, env)

    def ev(x, env):
        r = ev1(x, env)
        if r is not ABSENT:
            seen_present.add(id(x))
        return r

    def ev1(x, env):
        op = x[0]
        if op == "acc":
            arr, pr = vals[x[1]], pres[x[1]]
            idx = tuple(lin(i, env) for i in x[2])
            if any(not 0 <= k < n for k, n in zip(idx, arr.shape)):
                events["out_of_range"] += 1
                return ABSENT  # rule 1: outside the extent
            return float(arr[idx]) if pr[idx] else ABSENT
        if op == "num":
            return float(x[1])
        if op == "var":
            return float(env[x[1]])
        if op == "ext":
            return float(c.extents[x[1]])
        if op == "neg":
            a = ev(x[1], env)
            return ABSENT if a is ABSENT else -a
        if op == "exp":
            a = ev(x[1], env)
            return ABSENT if a is ABSENT else _exp(a)
        a, b = ev(x[1], env), ev(x[2], env)
        if op in _UNION2:  # rule 3: union
            if (a is ABSENT) != (b is ABSENT):
                events["union_one_absent"] += 1
            if a is ABSENT:
                return b
            if b is ABSENT:
                return a
            return born(op, _UNION2[op](a, b), a, b)
        if a is ABSENT or b is ABSENT:  # rule 3: intersection
            events["intersection_absent"] += 1
            return ABSENT
        if op == "/" and b == 0:
            events["div_by_zero"] += 1
        if op == "-" and a == b == -math.inf:
            events["minf_minus_minf"] += 1
        return born(op, _INTERSECT2[op](a, b), a, b)

    for e in c.einsums:
        here[0] = e.name
        space = space_of(e)
        points: dict[tuple, float] = {}
        for pt in itertools.product(*(range(c.ext(v)) for v in space)):
            env = dict(zip(space, pt))
            if e.filter is not None and not holds(c, e.filter, env):
                events["filtered_out" if e is c.einsums[-1] else "filtered_out_early"] += 1
                continue  # rule 1: the point does not exist
            x = ev(e.rhs, env)
            if x is not ABSENT:
                note(x)
                points[pt] = x
        unread[e.name] = set(expr_vars(e.rhs)) - set(_vars_outside_absent_parts(
            e.rhs, seen_present))
        annotated = [v for _, vs in e.annotations for v in vs]
        implicit = tuple(v for v in space if v not in e.lhs and v not in annotated)
        cur = list(space)
        for op, vs in [("sum", implicit), *e.annotations]:
            if not vs:
                continue
            op = {"+": "sum", "*": "prod"}.get(op, op)
            keep = [k for k, v in enumerate(cur) if v not in vs]
            groups: dict[tuple, float] = {}
            for pt, x in points.items():  # rule 2: fold the present values only
                key = tuple(pt[k] for k in keep)
                groups[key] = x if key not in groups else born(
                    op, _FOLD[op](groups[key], x), groups[key], x)
            for x in groups.values():
                note(x)
            if len(groups) < math.prod(c.ext(cur[k]) for k in keep):
                events[f"empty_{op}_group"] += 1
            points, cur = groups, [cur[k] for k in keep]
        assert cur == list(e.lhs), (cur, e.lhs)
        shape = tuple(c.ext(v) for v in e.lhs)
        v_arr, p_arr = np.zeros(shape), np.zeros(shape, bool)
        for pt, x in points.items():  # a group with no present value stays absent
            v_arr[pt] = x
            p_arr[pt] = True
        vals[e.name], pres[e.name] = v_arr, p_arr
    outs = {t: np.where(pres[t], vals[t], 0.0) for t in c.outputs}  # rule 6
    return Ref(outs, pres, vals, scale, nan_born, events, unread)


def _vars_outside_absent_parts(x, seen_present) -> list[str]:
    """The variables of `x` except those only in parts that are absent at every point."""
    if id(x) not in seen_present:
        return []
    if x[0] in ("acc", "var", "num", "ext"):
        return expr_vars(x)
    return [v for a in x[1:] for v in _vars_outside_absent_parts(a, seen_present)]


# ----------------------------------------------------------------------------- comparison
def backend(c: Cascade, arrays):
    prog = einsumc.load(c.source(), name="random_absent.ein")
    with np.errstate(all="ignore"):
        out = prog.compile("numpy")(**arrays)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def mismatches(got: dict, ref: Ref) -> list[str]:
    """Human-readable disagreements (empty: the outputs agree)."""
    bad = []
    for name, want in ref.outputs.items():
        g = got[name]
        if g.shape != want.shape:
            bad.append(f"{name}: shape {g.shape} != {want.shape}")
            continue
        nan_g, nan_w = np.isnan(g), np.isnan(want)
        same_special = (nan_g == nan_w) & (np.isposinf(g) == np.isposinf(want)) \
            & (np.isneginf(g) == np.isneginf(want))
        fin = np.isfinite(g) & np.isfinite(want)
        close = np.isclose(g, want, rtol=1e-9, atol=1e-12 * ref.scale)
        ok = same_special & (close | ~fin)
        if not ok.all():
            where = [tuple(int(i) for i in ix) for ix in np.argwhere(~ok)[:4]]
            bad.append(f"{name}{where}: got {[g[w].item() for w in where]}, "
                       f"want {[want[w].item() for w in where]}")
    return bad


SPECIALS = ("plain", "plain", "zeros", "inf", "neginf", "neginf_rows", "neginf_rows")


def make_inputs(c: Cascade, seed: int, special: str) -> dict[str, np.ndarray]:
    """Dyadic values in [-2, 2] (exact sums and products); `special` sprinkles in 0 / ±inf
    (`neginf_rows`: whole slices along the first or the last axis are -inf, so that maxima
    are -inf: rule 5's `(-inf) - (-inf)` in `exp(X - MX)`)."""
    rng = np.random.default_rng(seed)
    out = {}
    for t, vs in c.inputs.items():
        shape = tuple(c.ext(v) for v in vs)
        a = rng.integers(-8, 9, shape) / 4.0
        if special == "neginf_rows":
            a[rng.random(shape[0]) < 0.4] = -np.inf
            a[..., rng.random(shape[-1]) < 0.4] = -np.inf
        elif special != "plain":
            pool = {"zeros": [0.0], "inf": [0.0, np.inf, -np.inf],
                    "neginf": [-np.inf, -np.inf, 0.0]}[special]
            hit = rng.random(shape) < (0.7 if special == "neginf" and seed % 2 else 0.3)
            a = np.where(hit, rng.choice(pool, shape), a)
        out[t] = a.astype(np.float64)
    return out


# ----------------------------------------------------------------------------- strategies
@st.composite
def affine_index(draw, v: str):
    """The index of an axis whose tensor variable is `v`: mostly `v`, sometimes shifted,
    reversed or constant (the constant `V` is past the end: the whole read is absent)."""
    kind = draw(st.sampled_from(["id"] * 6 + ["+1", "-1", "+2", "rev", "c0", "cend"]))
    R = v.upper()
    return {"id": ident(v), "+1": (((1, v),), 1, ()), "-1": (((1, v),), -1, ()),
            "+2": (((1, v),), 2, ()), "rev": (((-1, v),), -1, ((1, R),)),
            "c0": ((), 0, ()), "cend": ((), 0, ((1, R),))}[kind]


@st.composite
def predicate(draw, vars_: list[str], ranks: list[str], depth: int):
    if depth > 0 and draw(st.integers(0, 2)) == 0:
        op = draw(st.sampled_from(["and", "or", "not"]))
        if op == "not":
            return ("not", draw(predicate(vars_, ranks, depth - 1)))
        return (op, draw(predicate(vars_, ranks, depth - 1)),
                draw(predicate(vars_, ranks, depth - 1)))

    def lin():
        vs = draw(st.lists(st.sampled_from(vars_), max_size=2, unique=True))
        terms = tuple((draw(st.sampled_from([1, 1, 2, -1])), v) for v in vs)
        exts = ((1, draw(st.sampled_from(ranks))),) if draw(st.integers(0, 4)) == 0 else ()
        return (terms, draw(st.integers(-2, 3)), exts)

    return ("cmp", draw(st.sampled_from(["<", "<=", "==", "!=", ">=", ">"])), lin(), lin())


@st.composite
def cascades(draw) -> Cascade:
    n_ranks = draw(st.integers(2, 3))
    ranks = list(RANKS[:n_ranks])
    extents = {r: draw(st.integers(1, 6)) for r in ranks}
    vars_ = [r.lower() for r in ranks]

    def var_subset(min_size=0):
        vs = [v for v in vars_ if draw(st.booleans())]
        while len(vs) < min_size:
            vs.append(next(v for v in vars_ if v not in vs))
        return tuple(draw(st.permutations(vs)))

    n_inputs = draw(st.integers(1, 3))
    inputs = {INPUTS[k]: var_subset(min_size=1) for k in range(n_inputs)}
    axes = dict(inputs)
    einsums: list[Einsum] = []
    n_einsums = draw(st.integers(2, 5))
    softmax = None
    for k in range(n_einsums):
        name = "O" if k == n_einsums - 1 else f"T{k + 1}"
        avail = list(inputs) + [e.name for e in einsums]
        if einsums:  # favour the latest temporary, so that the Einsums chain
            avail += [einsums[-1].name] * 3

        def acc(t, plain=False, axes=axes):
            return ("acc", t, tuple(ident(v) if plain else draw(affine_index(v)) for v in axes[t]))

        def leaf(avail=avail):
            kind = draw(st.sampled_from(["acc"] * 6 + ["num", "var", "ext"]))
            if kind == "acc":
                return acc(draw(st.sampled_from(avail)))
            if kind == "num":
                x = draw(st.sampled_from([0.5, 1.0, 2.0, 0.0, 0.25, 3.0, math.inf, -math.inf]))
                return ("neg", ("num", -x)) if x < 0 else ("num", x)
            if kind == "var":
                return ("var", draw(st.sampled_from(vars_)))
            return ("ext", draw(st.sampled_from(ranks)))

        def expr(depth):
            if depth == 0 or draw(st.integers(0, 3)) == 0:
                return leaf()
            if draw(st.integers(0, 5)) == 0:  # templates: x / y (rule 4), exp(x - y) (rule 5)
                op = draw(st.sampled_from(["/", "-"]))
                diff = (op, expr(depth - 1), expr(depth - 1))
                return diff if op == "/" else ("exp", diff)
            op = draw(st.sampled_from(["+", "+", "-", "-", "*", "*", "/", "/",
                                       "max", "min", "neg", "exp"]))
            if op in ("neg", "exp"):
                return (op, expr(depth - 1))
            return (op, expr(depth - 1), expr(depth - 1))

        forced = None  # (lhs, annotations) of a softmax template's step
        if softmax is not None:  # the template's second step: exp(X - MX)
            x, mx = softmax
            rhs = ("exp", ("-", acc(x, plain=True), acc(mx, plain=True)))
            forced = (axes[x], ())
            softmax = None
        elif k < n_einsums - 1 and draw(st.integers(0, 4)) == 0:
            # the template's first step: MX = X :: max(...) (then exp(X - MX) next)
            x = draw(st.sampled_from(avail))
            rhs = acc(x)
            kept = tuple(v for v in axes[x] if draw(st.booleans()))
            gone = tuple(v for v in expr_vars(rhs) if v not in kept)
            forced = (kept, (("max", gone),) if gone else ())
            softmax = (x, name)
        else:
            rhs = expr(draw(st.sampled_from([1, 1, 2, 2, 3])))
        lhs = forced[0] if forced else var_subset()
        filt = None
        if draw(st.booleans()):
            filt = draw(predicate(vars_, ranks, draw(st.integers(0, 2))))
        e = Einsum(name, lhs, rhs, (), filt)
        reduced = [v for v in space_of(e) if v not in lhs]
        annotations = list(forced[1]) if forced else []
        done = {v for _, vs in annotations for v in vs}
        pending = [v for v in reduced if v not in done and draw(st.booleans())]  # the rest: +
        while pending:
            size = draw(st.integers(1, len(pending)))
            group, pending = tuple(pending[:size]), pending[size:]
            annotations.append((draw(st.sampled_from(["max", "min", "sum"])), group))
        e.annotations = tuple(annotations)
        einsums.append(e)
        axes[name] = lhs
    outputs = tuple(e.name for e in einsums[:-1] if draw(st.integers(0, 3)) == 0)
    return Cascade(extents, inputs, einsums, outputs + (einsums[-1].name,))


# ----------------------------------------------------------------------------- the property
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cascades(), st.integers(0, 2**16),
       st.sampled_from(SPECIALS))
def test_random_cascade_with_absent_points_matches_reference(c: Cascade, seed: int, special):
    arrays = make_inputs(c, seed, special)
    ref = reference(c, arrays)
    got = backend(c, arrays)
    bad = mismatches(got, ref)
    assert not bad, "\n".join([c.source(), repr(arrays), *bad])


# ----------------------------------------------------------------------------- the reference
# checked on the fixed cases of tests/test_semantics.py and docs/language.md (the backend
# passes those tests with the same expected values)
def _acc(t, *idx):
    return ("acc", t, tuple(ident(i) if isinstance(i, str) else i for i in idx))


def _cmp(op, a, b):
    def f(x):
        if isinstance(x, str):
            return ident(x)
        if isinstance(x, int):
            return ((), x, ())
        return x
    return ("cmp", op, f(a), f(b))


INF = math.inf
SEMANTICS = {
    # rules 1 and 6
    "filtered_point": (Cascade({"M": 3, "P": 3}, {"A": ("m", "p")},
                               [Einsum("Z", ("m", "p"), ("+", _acc("A", "m", "p"), ("num", 1.0)),
                                       (), _cmp("<=", "m", "p"))]),
                       {"A": np.ones((3, 3))}, {"Z": np.triu(np.full((3, 3), 2.0))}),
    # rule 2: GM of a fully masked row is absent, so exp(QK - GM) is too
    "no_present_point": (Cascade({"M": 4, "P": 4}, {"S": ("m", "p")}, [
        Einsum("QK", ("m", "p"), _acc("S", "m", "p"), (), _cmp("<", "m", "p")),
        Einsum("GM", ("p",), _acc("QK", "m", "p"), (("max", ("m",)),)),
        Einsum("D", ("p",), ("exp", ("-", _acc("QK", "m", "p"), _acc("GM", "p"))))],
        outputs=("GM", "D")), {"S": np.zeros((4, 4))}, {"GM": [0, 0, 0, 0], "D": [0, 1, 2, 3]}),
    # rule 3
    "union_intersection": (Cascade({"M": 4}, {"A": ("m",), "B": ("m",)}, [
        Einsum("AM", ("m",), _acc("A", "m"), (), _cmp("<", "m", 2)),
        Einsum("X", ("m",), ("+", _acc("AM", "m"), _acc("B", "m"))),
        Einsum("Y", ("m",), ("max", _acc("AM", "m"), _acc("B", "m"))),
        Einsum("Z", ("m",), ("*", _acc("AM", "m"), _acc("B", "m")))], outputs=("X", "Y", "Z")),
        {"A": np.full(4, 5.0), "B": np.ones(4)},
        {"X": [6, 6, 1, 1], "Y": [5, 5, 1, 1], "Z": [5, 5, 0, 0]}),
    # rule 4
    "division_by_zero": (Cascade({"M": 3}, {"A": ("m",), "B": ("m",)}, [
        Einsum("Z", ("m",), ("/", _acc("A", "m"), _acc("B", "m")))]),
        {"A": np.array([1.0, 0, 3]), "B": np.array([0.0, 0, 2])}, {"Z": [0, 0, 1.5]}),
    # rule 5
    "minus_inf": (Cascade({"M": 2}, {"A": ("m",)}, [
        Einsum("Z", ("m",), ("exp", ("-", _acc("A", "m"), _acc("A", "m")))),
        Einsum("D", ("m",), ("-", _acc("A", "m"), _acc("A", "m")))], outputs=("Z", "D")),
        {"A": np.array([-INF, 2.0])}, {"Z": [0, 1], "D": [-INF, 0]}),
    # rule 1, out of range: B[m1, m0] = A[m1*M0 + m0] with M = 6, M0 = 4, M1 = 2
    "out_of_range": (Cascade({"M": 6, "M0": 4, "M1": 2}, {"A": ("m",)}, [
        Einsum("B", ("m1", "m0"), ("acc", "A", ((((4, "m1"), (1, "m0")), 0, ()),))),
        Einsum("S", ("m1",), _acc("B", "m1", "m0")),
        Einsum("C", ("m1",), _acc("B", "m1", "m0"), (("max", ("m0",)),))], outputs=("S", "C")),
        {"A": np.arange(1.0, 7.0)}, {"S": [10, 11], "C": [4, 6]}),
    "shifted": (Cascade({"M": 3}, {"A": ("m",)}, [
        Einsum("Z", ("m",), ("+", ("*", ("acc", "A", ((((1, "m"),), 1, ()),)), ("num", 2.0)),
                             ("acc", "A", ((((1, "m"),), -1, ()),))))]),
        {"A": np.array([1.0, 2, 3])}, {"Z": [4, 7, 2]}),
    "filter_only_variable": (Cascade({"M": 4, "P": 5}, {"A": ("p",)}, [
        Einsum("Z", ("p",), _acc("A", "p"), (), _cmp("<=", "m", "p"))]),
        {"A": np.ones(5)}, {"Z": [1, 2, 3, 4, 4]}),
    "prod_min": (Cascade({"M": 2, "P": 2}, {"A": ("m", "p")}, [
        Einsum("X", ("p",), _acc("A", "m", "p"), (("prod", ("m",)),)),
        Einsum("Y", ("p",), _acc("A", "m", "p"), (("min", ("m",)),))], outputs=("X", "Y")),
        {"A": np.array([[1.0, 2], [3, 4]])}, {"X": [3, 8], "Y": [1, 2]}),
    "var_as_value": (Cascade({"M": 3, "P": 2}, {"A": ("p",)}, [
        Einsum("Z", ("m", "p"), ("*", _acc("A", "p"), ("-", ("var", "m"), ("var", "p"))))]),
        {"A": np.array([1.0, 10])}, {"Z": [[0, -10], [1, 0], [2, 10]]}),
    "nan_behind_mask": (Cascade({"M": 4, "P": 3}, {"Q": ("m", "p"), "V": ("m",)}, [
        Einsum("S", ("m", "p"), _acc("Q", "m", "p"), (), _cmp("<", "m", 2)),
        Einsum("O", ("p",), ("*", _acc("S", "m", "p"), _acc("V", "m")))]),
        {"Q": np.ones((4, 3)), "V": np.array([1.0, 1, np.nan, 1])}, {"O": [2, 2, 2]}),
    "inf_over_zero_in_sum": (Cascade({"M": 3, "P": 2}, {"A": ("m", "p"), "C": ("m",)}, [
        Einsum("Y", ("p",), ("/", _acc("A", "m", "p"), _acc("C", "m")))]),
        {"A": np.array([[INF, INF], [1, 1], [1, 1]]), "C": np.array([0.0, 1, 1])},
        {"Y": [2, 2]}),
    "zero_divisor_of_contraction": (Cascade({"M": 3, "P": 2, "E": 4},
                                            {"Q": ("e", "p"), "K": ("e", "m")}, [
        Einsum("S", ("m", "p"), ("/", ("*", _acc("Q", "e", "p"), _acc("K", "e", "m")),
                                 ("num", 0.0)))]),
        {"Q": np.where(np.arange(8).reshape(4, 2) == 0, INF, 1.0), "K": np.ones((4, 3))},
        {"S": np.zeros((3, 2))}),
    # docs/language.md §4.3: annotation order
    "annotation_order": (Cascade({"E": 2, "M": 2}, {"X": ("e", "m")}, [
        Einsum("A", (), _acc("X", "e", "m"), (("max", ("m",)), ("min", ("e",)))),
        Einsum("B", (), _acc("X", "e", "m"), (("min", ("e",)), ("max", ("m",))))],
        outputs=("A", "B")), {"X": np.array([[1.0, 0], [0, 1]])}, {"A": 1, "B": 0}),
    # docs/language.md §4.4: coordinates and an extent as values
    "coords_extent": (Cascade({"M": 2, "P": 3}, {"B": ("p",), "C": ("m",)}, [
        Einsum("Y", ("m", "p"), ("+", ("+", ("-", ("var", "m"), ("var", "p")),
                                        ("*", ("num", 10.0), ("ext", "M"))),
                                 ("*", ("*", ("num", 0.0), _acc("B", "p")), _acc("C", "m"))))]),
        {"B": np.ones(3), "C": np.ones(2)}, {"Y": [[20, 19, 18], [21, 20, 19]]}),
}


@pytest.mark.parametrize("name", sorted(SEMANTICS))
def test_reference_on_the_semantics_examples(name):
    c, arrays, expected = SEMANTICS[name]
    ref = reference(c, arrays)
    for t, want in expected.items():
        np.testing.assert_array_equal(ref.outputs[t], np.asarray(want, np.float64), err_msg=t)
    assert not mismatches(backend(c, arrays), ref), c.source()


def test_reference_fully_masked_max_is_absent_not_minus_inf():
    """A max over no present point is absent (rule 2); a union with it keeps the other side."""
    c = Cascade({"I": 2, "J": 3}, {"A": ("i", "j")}, [
        Einsum("T1", ("i",), _acc("A", "i", "j"), (("max", ("j",)),), _cmp(">", "i", 0)),
        Einsum("O", ("i",), ("+", ("exp", _acc("T1", "i")), ("num", 1.0)))],
        outputs=("T1", "O"))
    ref = reference(c, {"A": np.full((2, 3), -INF)})
    assert ref.present["T1"].tolist() == [False, True]
    assert ref.outputs["O"].tolist() == [1.0, 1.0]  # exp(absent) + 1 = 1; exp(-inf) + 1 = 1
    assert ref.outputs["T1"].tolist() == [0.0, -INF]


# ----------------------------------------------------------------------------- regressions
# the minimal reproducers of the three bugs the hunt found (fixed)
def _run(src: str, **inputs):
    with np.errstate(all="ignore"):
        return einsumc.load(src, name="bug.ein").compile("numpy")(**inputs)


@pytest.mark.parametrize("src, inputs, name, want", [
    # the space is (i, j); `j >= 0` holds everywhere, so each O[i] sums 3 present points
    # (rules 1-2; `where j >= 1` gives 2 * A[i]^2 correctly, `j >= 0` gives A[i]^2)
    ("rank I = 2, J = 3\ninput A[i] : f64\noutput O[i] : f64\nO[i] = A[i] * A[i] where j >= 0\n",
     {"A": np.array([1.0, 2.0])}, "O", [3.0, 12.0]),
    # the same through query chunks: the chunks p >= 512 are wholly inside `j <= p`
    ("rank J = 3, P\ninput A[p] : f64\noutput O[p] : f64\nO[p] = A[p] * A[p] where j <= p\n",
     {"A": np.ones(1000)}, "O", np.minimum(np.arange(1000) + 1, 3).astype(float)),
    # k occurs only in a read past the end (absent for every k); `+` keeps A[i] (rule 3), so
    # each O[i] sums A[i]^2 over the 3 present points k
    ("rank I = 2, K = 3\ninput A[i] : f64, B[k] : f64\noutput O[i] : f64\n"
     + "O[i] = (B[k + K] + A[i]) * A[i]\n",
     {"A": np.array([1.0, 2.0]), "B": np.full(3, 5.0)}, "O", [3.0, 12.0]),
], ids=["filter_always_true", "filter_chunked", "absent_read_under_union"])
def test_bug_summed_variable_in_no_factor_loses_its_multiplicity(src, inputs, name, want):
    np.testing.assert_array_equal(_run(src, **inputs)[name], want)


@pytest.mark.parametrize("src, inputs", [
    # terms inf*0, inf*1, 1*0, 1*1: the sum is NaN (0 * inf); the backend gives sum(A)*sum(B)
    ("rank I = 2, J = 2\ninput A[i] : f64, B[j] : f64\noutput O : f64\nO = A[i] * B[j]\n",
     {"A": np.array([np.inf, 1.0]), "B": np.array([0.0, 1.0])}),
    # terms inf*0*0, inf*1*1: NaN; the backend multiplies the sum 1 by the literal inf
    ("rank K = 2\ninput A[k] : f64\noutput O : f64\nO = inf * A[k] * A[k]\n",
     {"A": np.array([0.0, 1.0])}),
], ids=["private_sums", "inf_literal"])
def test_bug_contraction_loses_the_nan_of_zero_times_inf(src, inputs):
    assert np.isnan(_run(src, **inputs)["O"])


@pytest.mark.parametrize("src, inputs, want", [
    # 2 / inf = 0, so inf / (2 / inf) = inf / 0 = 0 (rule 4); `O[i] = ...` (no sum) gives 0
    ("rank I = 1\ninput A[i] : f64\noutput O : f64\nO = A[i] / (2 / A[i])\n",
     {"A": np.array([np.inf])}, 0.0),
    # 2 / 0 = 0, so inf / (2 / 0) = inf / 0 = 0 (rule 4); the rewrite gives inf * 0 / 2 = NaN
    ("rank I = 1\ninput A[i] : f64, B[i] : f64\noutput O : f64\nO = A[i] / (2 / B[i])\n",
     {"A": np.array([np.inf]), "B": np.array([0.0])}, 0.0),
], ids=["divisor_inf", "numerator_inf_divisor_zero"])
def test_bug_contraction_rewrites_a_divisor_of_a_divisor(src, inputs, want):
    assert _run(src, **inputs)["O"] == want


def test_bug_reproducers_agree_with_the_reference():
    """The expected values of the regression tests above are the reference's."""
    c1 = Cascade({"I": 2, "J": 3}, {"A": ("i",)}, [
        Einsum("O", ("i",), ("*", _acc("A", "i"), _acc("A", "i")), (), _cmp(">=", "j", 0))])
    r1 = reference(c1, {"A": np.array([1.0, 2.0])})
    assert r1.outputs["O"].tolist() == [3.0, 12.0]
    c1b = Cascade({"I": 2, "K": 3}, {"A": ("i",), "B": ("k",)}, [
        Einsum("O", ("i",), ("*", ("+", ("acc", "B", ((((1, "k"),), 0, ((1, "K"),)),)),
                                   _acc("A", "i")), _acc("A", "i")))])
    assert c1b.source().splitlines()[-1] == "O[i] = ((B[k + K] + A[i]) * A[i])"
    r1b = reference(c1b, {"A": np.array([1.0, 2.0]), "B": np.full(3, 5.0)})
    assert r1b.outputs["O"].tolist() == [3.0, 12.0]
    c2 = Cascade({"I": 2, "J": 2}, {"A": ("i",), "B": ("j",)}, [
        Einsum("O", (), ("*", _acc("A", "i"), _acc("B", "j")))])
    r2 = reference(c2, {"A": np.array([INF, 1.0]), "B": np.array([0.0, 1.0])})
    assert np.isnan(r2.outputs["O"]) and r2.nan_born == {("O", "*")}
    c3 = Cascade({"K": 2}, {"A": ("k",)}, [
        Einsum("O", (), ("*", ("*", ("num", INF), _acc("A", "k")), _acc("A", "k")))])
    assert np.isnan(reference(c3, {"A": np.array([0.0, 1.0])}).outputs["O"])
    assert c3.source().splitlines()[-1] == "O = ((inf * A[k]) * A[k])"
    c4 = Cascade({"I": 1}, {"A": ("i",), "B": ("i",)}, [
        Einsum("O", (), ("/", _acc("A", "i"), ("/", ("num", 2.0), _acc("B", "i"))))])
    assert c4.source().splitlines()[-1] == "O = (A[i] / (2.0 / B[i]))"
    for a, b in [(INF, INF), (INF, 0.0)]:
        arrays = {"A": np.array([a]), "B": np.array([b])}
        assert reference(c4, arrays).outputs["O"] == 0.0
