"""Random small cascades (as `.ein` text) against an independent NumPy evaluation.

Hypothesis draws cascades of 1-4 Einsums over 2-4 ranks with small fixed extents:
products, sums and differences of accesses, constants and rank variables used as values,
`exp`/`tanh`/`max`/`min` maps, implicit `+` reductions and `:: max(...)`, `min(...)`,
`sum(...)` annotations, and (on the last Einsum only) a `where` filter of affine predicates.
Each cascade is compiled with the NumPy backend and compared with `reference()` below, which
evaluates every Einsum directly over its full iteration space with broadcasting:

  * the right-hand side is evaluated at every point of the iteration space (LHS variables,
    then the other variables of the right-hand side), then reduced: the implicit `+` over
    the unannotated variables first, then each annotation in the order written;
  * a point failing the filter does not exist; a reduction combines only present values
    and gives an absent point when it has none (so `max` over no present point is absent,
    not -inf); absent output points read as 0 (the contract's rules 1, 2 and 6: the only
    absent-point rules a filter on the last Einsum can reach).

A second property: printing a checked program and loading the text again gives an equal
program, for the random cascades and for every example.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einsumc

RANKS = ("I", "J", "K", "L")
INPUTS = ("A", "B", "C")
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the model
@dataclass
class Einsum:
    name: str
    lhs: tuple[str, ...]
    rhs: tuple  # expression tree (see `text` / `value`)
    annotations: tuple[tuple[str, tuple[str, ...]], ...]  # (op, vars) in written order
    filter: tuple | None = None


@dataclass
class Cascade:
    extents: dict[str, int]  # rank name -> extent
    inputs: dict[str, tuple[str, ...]]  # name -> index variables
    einsums: list[Einsum]

    @property
    def output(self) -> Einsum:
        return self.einsums[-1]

    def axes(self, tensor: str) -> tuple[str, ...]:
        if tensor in self.inputs:
            return self.inputs[tensor]
        return next(e.lhs for e in self.einsums if e.name == tensor)

    def source(self) -> str:
        lines = ["rank " + ", ".join(f"{r} = {n}" for r, n in self.extents.items())]
        lines.append("input  " + ", ".join(f"{t}[{', '.join(v)}]" for t, v in self.inputs.items()))
        out = self.output
        lines.append("output " + out.name + (f"[{', '.join(out.lhs)}]" if out.lhs else ""))
        for e in self.einsums:
            s = e.name + (f"[{', '.join(e.lhs)}]" if e.lhs else "") + " = " + self.text(e.rhs)
            if e.annotations:
                s += " :: " + ", ".join(f"{op}({', '.join(vs)})" for op, vs in e.annotations)
            if e.filter is not None:
                s += " where " + pred_text(e.filter)
            lines.append(s)
        return "\n".join(lines) + "\n"

    def text(self, x) -> str:
        op = x[0]
        if op == "acc":
            ax = [v + (f" + {o}" if o > 0 else f" - {-o}" if o < 0 else "")
                  for v, o in zip(self.axes(x[1]), x[2] if len(x) > 2 else itertools.repeat(0))]
            return x[1] + (f"[{', '.join(ax)}]" if ax else "")
        if op == "num":
            return repr(x[1])
        if op == "var":
            return x[1]
        if op in ("+", "-", "*"):
            return f"({self.text(x[1])} {op} {self.text(x[2])})"
        if op == "neg":
            return f"(-{self.text(x[1])})"
        return f"{op}({', '.join(self.text(a) for a in x[1:])})"


def lin_text(lin) -> str:
    terms, const = lin
    parts = [(f"{c}*{v}" if c != 1 else v) for c, v in terms]
    if const or not parts:
        parts.append(str(const))
    return " + ".join(parts)


def pred_text(p) -> str:
    op = p[0]
    if op == "cmp":
        return f"{lin_text(p[2])} {p[1]} {lin_text(p[3])}"
    if op == "not":
        return f"not ({pred_text(p[1])})"
    return f"({pred_text(p[1])}) {op} ({pred_text(p[2])})"


def expr_vars(c: Cascade, x) -> list[str]:
    out: list[str] = []
    if x[0] == "acc":
        out += list(c.axes(x[1]))
    elif x[0] == "var":
        out.append(x[1])
    else:
        for a in x[1:]:
            if isinstance(a, tuple):
                out += expr_vars(c, a)
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- the reference
_CMP = {"<": np.less, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal,
        ">=": np.greater_equal, ">": np.greater}
_UNION = {"+": np.add, "max": np.maximum, "min": np.minimum}  # rule 3: absent operand ignored
_INTERSECT = {"-": np.subtract, "*": np.multiply}  # rule 3: absent if either operand is


def reference(c: Cascade, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """The output by direct evaluation in float64, and the largest magnitude seen on the way.

    Every value is a pair (array, presence mask) over the Einsum's full iteration space.
    """
    ext = {r.lower(): n for r, n in c.extents.items()}
    tensors = {k: (v.astype(np.float64), np.ones(v.shape, bool), c.inputs[k])
               for k, v in arrays.items()}
    scale = max([1.0] + [float(np.abs(a).max()) for a, _, _ in tensors.values() if a.size])
    out = None
    for e in c.einsums:
        space = list(e.lhs) + [v for v in expr_vars(c, e.rhs) if v not in e.lhs]
        shape = tuple(ext[v] for v in space)

        def grid(v):
            s = [1] * len(space)
            s[space.index(v)] = ext[v]
            return np.arange(ext[v]).reshape(s)

        def full(a):
            return np.broadcast_to(a, shape)

        def access(name, offsets):
            arr, pres, axes = tensors[name]
            if not axes:
                return full(arr), full(pres)
            idx, ok = [], np.ones(shape, bool)
            for v, off, n in zip(axes, offsets, arr.shape):
                i = full(grid(v) + off)
                ok = ok & (i >= 0) & (i < n)  # rule 1: outside the extent reads absent
                idx.append(np.clip(i, 0, n - 1))
            return arr[tuple(idx)], pres[tuple(idx)] & ok

        def value(x):
            op = x[0]
            if op == "acc":
                return access(x[1], x[2] if len(x) > 2 else itertools.repeat(0))
            if op == "num":
                return full(np.float64(x[1])), full(True)
            if op == "var":
                return full(grid(x[1]).astype(np.float64)), full(True)
            if op == "neg":
                a, p = value(x[1])
                return -a, p
            if op in ("exp", "tanh"):
                a, p = value(x[1])
                return getattr(np, op)(a), p
            (a, pa), (b, pb) = value(x[1]), value(x[2])
            if op in _INTERSECT:
                return _INTERSECT[op](a, b), pa & pb
            fn = _UNION[op]
            return np.where(pa & pb, fn(a, b), np.where(pa, a, b)), pa | pb

        def lin(lv):
            terms, const = lv
            return sum((k * grid(v) for k, v in terms), const)

        def pred(p):
            op = p[0]
            if op == "cmp":
                return full(_CMP[p[1]](lin(p[2]), lin(p[3])))
            if op == "not":
                return ~pred(p[1])
            return (pred(p[1]) & pred(p[2])) if op == "and" else (pred(p[1]) | pred(p[2]))

        val, present = value(e.rhs)
        val, present = full(val).astype(np.float64), full(present)
        if e.filter is not None:
            present = present & pred(e.filter)  # rule 1: a filtered-out point does not exist
        if present.any():
            scale = max(scale, float(np.abs(val[present]).max()))
        cur = list(space)
        annotated = [v for _, vs in e.annotations for v in vs]
        steps = [("sum", tuple(v for v in space if v not in e.lhs and v not in annotated))]
        steps += list(e.annotations)  # the implicit + first, then the annotations as written
        for op, vs in steps:
            if not vs:
                continue
            axes = tuple(cur.index(v) for v in vs)
            fill = {"sum": 0.0, "max": -np.inf, "min": np.inf}[op]
            fn = {"sum": np.sum, "max": np.max, "min": np.min}[op]
            val = fn(np.where(present, val, fill), axis=axes)
            present = present.any(axis=axes)  # rule 2: no present value -> absent
            cur = [v for v in cur if v not in vs]
        assert cur == list(e.lhs)
        val = np.where(present, val, 0.0)
        tensors[e.name] = (val, present, e.lhs)
        out = val  # rule 6: absent output points read as 0
    return out, scale


# ----------------------------------------------------------------------------- strategies
@st.composite
def cascades(draw, absent_everywhere: bool = False) -> Cascade:
    """A random cascade; with `absent_everywhere`, any Einsum may have a filter and accesses
    may be offset past the extent (`A[i + 1]`), so absent points flow through the cascade."""
    n_ranks = draw(st.integers(2, 4))
    ranks = RANKS[:n_ranks]
    extents = {r: draw(st.integers(1, 4)) for r in ranks}
    vars_ = [r.lower() for r in ranks]

    def var_subset(min_size=0):
        vs = [v for v in vars_ if draw(st.booleans())]
        while len(vs) < min_size:
            vs.append(next(v for v in vars_ if v not in vs))
        return tuple(draw(st.permutations(vs)))

    n_inputs = draw(st.integers(1, 3))
    inputs = {INPUTS[k]: var_subset(min_size=1) for k in range(n_inputs)}
    c = Cascade(extents, inputs, [])
    n_einsums = draw(st.sampled_from([1, 2, 3, 3, 4, 4]))
    for k in range(n_einsums):
        last = k == n_einsums - 1
        name = "O" if last else f"T{k + 1}"
        avail = list(inputs) + [e.name for e in c.einsums]
        if c.einsums:  # favour the latest temporary, so that the Einsums chain
            avail += [c.einsums[-1].name] * 2

        def leaf():
            kind = draw(st.sampled_from(["acc", "acc", "acc", "acc", "num", "var"]))
            if kind == "acc":
                t = draw(st.sampled_from(avail))
                n = len(c.axes(t))
                if absent_everywhere and draw(st.booleans()):
                    offs = tuple(draw(st.sampled_from([0, 0, 1, -1, 2])) for _ in range(n))
                else:
                    offs = (0,) * n
                return ("acc", t, offs)
            if kind == "num":
                return ("num", draw(st.sampled_from([0.5, 1.0, 2.0, 1.5, 0.25])))
            return ("var", draw(st.sampled_from(vars_)))

        def expr(depth):
            if depth == 0 or draw(st.integers(0, 3)) == 0:
                return leaf()
            op = draw(st.sampled_from(["+", "-", "*", "*", "exp", "tanh", "max", "min", "neg"]))
            if op == "exp":  # bounded argument: exp of a tanh or of an input (values in [-1, 1])
                if draw(st.booleans()):
                    return ("exp", ("tanh", expr(depth - 1)))
                t = draw(st.sampled_from(list(inputs)))
                return ("exp", ("acc", t, (0,) * len(inputs[t])))
            if op in ("tanh", "neg"):
                return (op, expr(depth - 1))
            return (op, expr(depth - 1), expr(depth - 1))

        rhs = expr(draw(st.sampled_from([0, 1, 2, 2, 3, 3])))
        lhs = var_subset()
        reduced = [v for v in expr_vars(c, rhs) if v not in lhs]
        annotations = []
        pending = [v for v in reduced if draw(st.booleans())]  # annotated; the rest: implicit +
        while pending:
            size = draw(st.integers(1, len(pending)))
            group, pending = tuple(pending[:size]), pending[size:]
            annotations.append((draw(st.sampled_from(["max", "min", "sum"])), group))
        filt = None
        if (last or absent_everywhere) and draw(st.booleans()):
            space = list(lhs) + reduced
            filt = predicate(draw, space, extents, depth=draw(st.integers(0, 2)))
        c.einsums.append(Einsum(name, lhs, rhs, tuple(annotations), filt))
    return c


def predicate(draw, space, extents, depth):
    if depth > 0 and draw(st.booleans()):
        op = draw(st.sampled_from(["and", "or", "not"]))
        if op == "not":
            return ("not", predicate(draw, space, extents, depth - 1))
        return (op, predicate(draw, space, extents, depth - 1),
                predicate(draw, space, extents, depth - 1))

    def lin():
        vs = draw(st.lists(st.sampled_from(space), max_size=2, unique=True)) if space else []
        return (tuple((draw(st.integers(1, 2)), v) for v in vs), draw(st.integers(-1, 3)))

    return ("cmp", draw(st.sampled_from(["<", "<=", "==", "!=", ">=", ">"])), lin(), lin())


# ----------------------------------------------------------------------------- properties
def run_both(c: Cascade, seed: int):
    text = c.source()
    prog = einsumc.load(text, name="random.ein")
    rng = np.random.default_rng(seed)
    ext = {r.lower(): n for r, n in c.extents.items()}
    arrays = {t: rng.uniform(-1, 1, tuple(ext[v] for v in axes)).astype(np.float32)
              for t, axes in c.inputs.items()}
    with np.errstate(all="ignore"):
        got = prog.compile(target="numpy")(**arrays)["O"]
    want, scale = reference(c, arrays)
    return text, prog, np.asarray(got, dtype=np.float64), want, scale


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cascades(), st.integers(0, 2**16))
def test_random_cascade_matches_direct_evaluation(c: Cascade, seed: int):
    text, prog, got, want, scale = run_both(c, seed)
    assert got.shape == want.shape, text
    assert np.isfinite(got).all(), text
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cascades(absent_everywhere=True), st.integers(0, 2**16))
def test_random_cascade_with_absent_points_matches(c: Cascade, seed: int):
    """Filters on any Einsum and out-of-range accesses: absent points flow through `+`
    (union), `*`/`-`/maps (intersection), `max`/`min` maps (union) and every reduction."""
    text, prog, got, want, scale = run_both(c, seed)
    assert got.shape == want.shape, text
    assert np.isfinite(got).all(), text
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans().flatmap(lambda a: cascades(absent_everywhere=a)))
def test_random_cascade_round_trips_through_the_printer(c: Cascade):
    prog = einsumc.load(c.source(), name="random.ein")
    again = einsumc.load(prog.to_source(), name="printed.ein")
    assert again == prog, prog.to_source()
    assert again.to_source() == prog.to_source()


EXAMPLES = sorted((ROOT / "examples").glob("**/*.ein"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}/{p.stem}" for p in EXAMPLES])
def test_example_round_trips_through_the_printer(path: Path):
    prog = einsumc.load(str(path))
    text = prog.to_source()
    again = einsumc.load(text, name="printed.ein")
    assert again == prog, text
    assert again.to_source() == text


# ----------------------------------------------------------------------------- fixed cases
def _case(extents, inputs, einsums) -> Cascade:
    return Cascade(extents, inputs, [Einsum(*e) for e in einsums])


FIXED = {
    # O[i] = max_j of a fully masked row is absent -> 0, never -inf
    "masked_max_row": _case({"I": 3, "J": 3}, {"A": ("i", "j")},
                            [("O", ("i",), ("acc", "A"), (("max", ("j",)),),
                              ("cmp", "<", (((1, "j"),), 0), (((1, "i"),), 0)))]),
    # implicit + first, then max: O[i] = max_k sum_j A[i,j] * B[j,k], masked on k
    "sum_then_max": _case({"I": 2, "J": 3, "K": 4}, {"A": ("i", "j"), "B": ("j", "k")},
                          [("O", ("i",), ("*", ("acc", "A"), ("acc", "B")), (("max", ("k",)),),
                            ("cmp", "!=", (((1, "k"),), 0), ((), 1)))]),
    # an annotated sum before a max is applied in the written order
    "written_order": _case({"I": 2, "J": 3, "K": 3}, {"A": ("i", "j", "k")},
                           [("O", ("i",), ("acc", "A"), (("max", ("j",)), ("sum", ("k",))),
                             None)]),
    # LHS variable absent from the right: broadcast; filter on it
    "broadcast_filter": _case({"I": 3, "J": 4}, {"A": ("i",)},
                              [("O", ("i", "j"), ("acc", "A"), (),
                                ("cmp", "<=", (((1, "i"),), 0), (((1, "j"),), 0)))]),
    # a rank variable used as a value, and a scalar temporary
    "var_value_scalar": _case({"I": 3, "J": 2}, {"A": ("i", "j")},
                              [("T1", (), ("acc", "A"), (), None),
                               ("O", ("i",), ("*", ("acc", "T1"), ("-", ("var", "i"), ("num", 1.0))),
                                (), None)]),
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_fixed_cascades(name: str):
    c = FIXED[name]
    text, prog, got, want, scale = run_both(c, 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=text)
    if name == "masked_max_row":
        assert got[0] == 0.0 and np.isfinite(got).all()


def test_reference_agrees_with_einsum():
    """The reference's reduction machinery against np.einsum on a plain contraction."""
    c = _case({"I": 3, "J": 4, "K": 2}, {"A": ("i", "j"), "B": ("j", "k")},
              [("O", ("i", "k"), ("*", ("acc", "A"), ("acc", "B")), (), None)])
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    want, _ = reference(c, {"A": a, "B": b})
    np.testing.assert_allclose(want, np.einsum("ij,jk->ik", a, b), rtol=1e-12)
    assert list(itertools.islice(c.source().splitlines(), 4))[-1] == "O[i, k] = (A[i, j] * B[j, k])"
