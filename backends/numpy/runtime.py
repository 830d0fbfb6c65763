"""The NumPy reference runtime: the executable definition of the .ein semantics.

It runs a *plan* (plain Python data made by `lower.py` from a checked program) and imports
NumPy only, because `einsumc compile --target numpy` copies this file verbatim into the
standalone module it emits: the in-process backend and the emitted module share one
implementation of the semantics.

Values. A value over an Einsum's iteration space is a `Val`: an array broadcastable to the
space's shape (size-1 axes where it does not vary) and a presence mask (`None`: all present).
`ABSENT` (arr None) is a value with no present point; every operation short-circuits on it,
so a fully masked tile costs only the running-state updates.

Absent points (the language contract, section 3):
  1. a point failing the filter does not exist; an access outside the extent is absent;
  2. a reduction combines the present values; no present value -> absent;
  3. `+`, `max(a, b)`, `min(a, b)` ignore an absent operand (union); every other map is
     absent if any operand is (intersection);
  4. x / 0 is 0;  5. (-inf) - (-inf) is -inf;  6. absent output points read as 0.

Execution. Statements run in program order. Statements that define a tensor along an
iterative rank (`RM[m1+1, p]`, and every `X[.., m1, ..]` beside it) run in a loop over that
rank, one coordinate (one tile) at a time, keeping only the running state, so memory stays
bounded by the tile. When some rank (typically the query rank `p`) is never reduced, never
offset and never iterated, the whole cascade runs in chunks of it ("query tiles"),
bounding every intermediate (even the 3-pass cascade's `QK[m, p]`) by the chunk.
"""
from __future__ import annotations

import copy
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: elements of the largest intermediate per query chunk (4 MiB in f32)
CHUNK_ELEMENTS = 1 << 20
#: the largest query chunk when a filter involves the chunk rank
FILTERED_CHUNK = 512


class EinRuntimeError(Exception):
    """A problem with the inputs, params or extents; `span` is (line, col, start, end) or None."""

    def __init__(self, message, span=None):
        super().__init__(message)
        self.message = message
        self.span = span


class Val:
    """A value over an iteration space: array (None: all absent) and mask (None: all present)."""

    __slots__ = ("arr", "mask")

    def __init__(self, arr, mask=None):
        self.arr = arr
        self.mask = mask


ABSENT = Val(None, None)


class Stored:
    """A tensor (or a slice of it): array, presence mask, and the coordinate of element 0."""

    __slots__ = ("arr", "mask", "offsets")

    def __init__(self, arr, mask, offsets):
        self.arr = arr
        self.mask = mask
        self.offsets = offsets


# --------------------------------------------------------------------------- elementwise maps
def _both(a, b):
    if a.mask is None:
        return b.mask
    if b.mask is None:
        return a.mask
    return a.mask & b.mask


def _union(a, b, fill, fn):
    if a.arr is None:
        return b
    if b.arr is None:
        return a
    if a.mask is None and b.mask is None:
        return Val(fn(a.arr, b.arr))
    pa = True if a.mask is None else a.mask
    pb = True if b.mask is None else b.mask
    av = a.arr if a.mask is None else np.where(pa, a.arr, fill)
    bv = b.arr if b.mask is None else np.where(pb, b.arr, fill)
    mask = None if (a.mask is None or b.mask is None) else (a.mask | b.mask)
    return Val(fn(av, bv), mask)


def _sub(a, b):
    d = a - b
    small = a if np.size(a) <= np.size(b) else b
    if d.dtype.kind == "f" and np.isneginf(small).any():  # only then can -inf - -inf occur
        bad = np.isnan(d)
        if bad.any():
            both = bad & np.isneginf(a) & np.isneginf(b)
            if both.any():
                d = np.where(both, -np.inf, d)  # rule 5: (-inf) - (-inf) = -inf
    return d


def _div(a, b):
    shape = np.broadcast_shapes(np.shape(a), np.shape(b))
    dtype = np.result_type(a, b)
    if dtype.kind != "f":  # integer coordinates divided in a filter
        dtype = np.dtype(np.float64)
    out = np.zeros(shape, dtype=dtype)
    np.divide(a, b, out=out, where=(b != 0))  # rule 4: x / 0 = 0
    return out


def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


_UNARY = {"exp": np.exp, "log": np.log, "sqrt": np.sqrt, "tanh": np.tanh, "abs": np.abs,
          "sigmoid": _sigmoid, "-": np.negative}
_BINARY = {"-": _sub, "*": np.multiply, "/": _div}
_IN_PLACE = ("exp", "tanh", "sqrt", "abs", "log")


def _all_finite(a) -> bool:
    """No inf or NaN in `a`: one sum decides it unless the sum itself overflows."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum: look closer
        total = a.sum(dtype=np.float64) if a.dtype.itemsize < 4 else a.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(a).all())


def _owned(a):
    """Whether `a` is a fresh, writable float array of its own (safe to overwrite)."""
    return (isinstance(a, np.ndarray) and a.flags.owndata and a.flags.writeable
            and a.dtype.kind == "f" and a.ndim > 0)


def _intersect(fn, *vals):
    for v in vals:
        if v.arr is None:
            return ABSENT
    mask = vals[0].mask
    for v in vals[1:]:
        mask = _both(Val(None, mask), v)
    return Val(fn(*[v.arr for v in vals]), mask)


# --------------------------------------------------------------------------- contraction
def _contract(ops, out_vars):
    """Sum-of-products over named axes with BLAS matmuls.

    ops: list of (array, vars) with one array axis per var; returns an array over
    `out_vars` (vars absent from every operand are left out: the caller broadcasts).
    """
    keep_final = set(out_vars)
    ops = [(a, tuple(v)) for a, v in ops]

    def needed(i, j=None):
        s = set(keep_final)
        for k, (_, vs) in enumerate(ops):
            if k != i and k != j:
                s.update(vs)
        return s

    # sum out variables private to one operand
    for i, (a, vs) in enumerate(ops):
        need = needed(i)
        drop = [k for k, v in enumerate(vs) if v not in need]
        if drop:
            ops[i] = (a.sum(axis=tuple(drop)), tuple(v for v in vs if v in need))
    while len(ops) > 1:
        best = None
        for i in range(len(ops)):
            for j in range(i + 1, len(ops)):
                va, vb = set(ops[i][1]), set(ops[j][1])
                size = 1
                for v in va | vb:
                    if v in needed(i, j):
                        size *= _axis_len(ops, v)
                key = (not (va & vb), size)
                if best is None or key < best[0]:
                    best = (key, i, j)
        _, i, j = best
        keep = needed(i, j)
        (a, va), (b, vb) = ops[i], ops[j]
        # put first the operand whose free variables come first in the output, so that
        # the matmul writes the result in the output's order (contiguous, no transpose)
        pos = {v: k for k, v in enumerate(out_vars)}
        fa = [pos.get(v, len(pos)) for v in va if v not in vb]
        fb = [pos.get(v, len(pos)) for v in vb if v not in va]
        if fa and fb and min(fb) < min(fa):
            (a, va), (b, vb) = (b, vb), (a, va)
        res = _pair(a, va, b, vb, keep)
        ops = [o for k, o in enumerate(ops) if k not in (i, j)] + [res]
    a, vs = ops[0]
    drop = [k for k, v in enumerate(vs) if v not in keep_final]
    if drop:
        a = a.sum(axis=tuple(drop))
        vs = tuple(v for v in vs if v in keep_final)
    order = [v for v in out_vars if v in vs]
    return a.transpose([vs.index(v) for v in order]), tuple(order)


def _axis_len(ops, v):
    for a, vs in ops:
        if v in vs:
            return a.shape[vs.index(v)]
    return 1


def _pair(a, va, b, vb, keep):
    batch = [v for v in va if v in vb and v in keep]
    contr = [v for v in va if v in vb and v not in keep]
    fa = [v for v in va if v not in vb]
    fb = [v for v in vb if v not in va]
    sa = dict(zip(va, a.shape))
    sb = dict(zip(vb, b.shape))
    nb = math.prod(sa[v] for v in batch)
    nc = math.prod(sa[v] for v in contr)
    na = math.prod(sa[v] for v in fa)
    nbb = math.prod(sb[v] for v in fb)
    at = a.transpose([va.index(v) for v in batch + fa + contr]).reshape(nb, na, nc)
    bt = b.transpose([vb.index(v) for v in batch + contr + fb]).reshape(nb, nc, nbb)
    r = np.matmul(at, bt)
    shape = [sa[v] for v in batch] + [sa[v] for v in fa] + [sb[v] for v in fb]
    return r.reshape(shape), tuple(batch + fa + fb)


# --------------------------------------------------------------------------- the interpreter
class Runner:
    """Runs one plan on one set of inputs (extents bound, params evaluated)."""

    def __init__(self, plan):
        self.plan = plan
        self.dtype = np.float64 if plan["compute_dtype"] == "f64" else np.float32
        self.stmts = plan["stmts"]

    # ---------------------------------------------------------------- binding
    def bind(self, inputs, params):
        plan = self.plan
        known = {p[0] for p in plan["inputs"]} | set(plan["runtime_params"])
        for k in inputs:
            if k not in known:
                raise EinRuntimeError(
                    f"unexpected argument '{k}'; the cascade takes: " + ", ".join(sorted(known)))
        ext = {}
        self.extent_source = {}
        arrays = {}
        for name, axes, dtype, span in plan["inputs"]:
            if name not in inputs:
                raise EinRuntimeError(f"missing input '{name}'", span)
            try:
                arr = _to_numpy(inputs[name], self.dtype)
            except (TypeError, ValueError) as exc:
                raise EinRuntimeError(f"input '{name}' is not a numeric array: {exc}",
                                      span) from None
            if arr.ndim != len(axes):
                raise EinRuntimeError(
                    f"input '{name}' has {len(axes)} axes [{', '.join(axes)}] but the array "
                    f"has {arr.ndim} (shape {tuple(arr.shape)})", span)
            for k, rank in enumerate(axes):
                n = int(arr.shape[k])
                if rank in ext and ext[rank] != n:
                    src = self.extent_source[rank]
                    raise EinRuntimeError(
                        f"rank {rank} is {ext[rank]} from {src} but {n} from axis {k} of "
                        f"input '{name}'", span)
                ext.setdefault(rank, n)
                self.extent_source.setdefault(rank, f"axis {k} of input '{name}'")
            arrays[name] = arr
        self.params = {}
        for name in plan["runtime_params"]:
            if name not in params:
                raise EinRuntimeError(f"missing param '{name}' (pass it as a keyword argument)",
                                      plan["param_spans"].get(name))
            try:
                self.params[name] = float(params[name])
            except (TypeError, ValueError):
                raise EinRuntimeError(f"param '{name}' must be a number, got {params[name]!r}",
                                      plan["param_spans"].get(name)) from None
        self.extents = self._bind_extents(ext)
        for name, expr, span in plan["const_params"]:
            try:
                self.params[name] = _const(expr, self.extents, self.params)
            except ZeroDivisionError:
                raise EinRuntimeError(f"param '{name}' divides by zero", span) from None
            except (ValueError, OverflowError) as exc:
                raise EinRuntimeError(f"param '{name}' has no value: {exc}", span) from None
        for name in plan["integer_params"]:
            v = self.params[name]
            if not math.isfinite(v) or v != int(v):
                raise EinRuntimeError(f"param '{name}' = {v} is used in a filter or an index, "
                                      "so it must hold an integer value",
                                      plan["param_spans"].get(name))
        self.inputs = {n: Stored(a, None, (0,) * a.ndim) for n, a in arrays.items()}

    def _bind_extents(self, observed):
        plan = self.plan
        ext = {}
        pending = list(plan["ranks"])
        for _ in range(len(pending) + 1):
            rest = []
            for name, expr, span in pending:
                if expr is None:
                    if name in observed:
                        ext[name] = observed[name]
                    else:
                        rest.append((name, expr, span))
                    continue
                try:
                    v = _const(expr, ext, {})
                except KeyError:
                    rest.append((name, expr, span))
                    continue
                except ZeroDivisionError:
                    raise EinRuntimeError(f"extent of rank {name} divides by zero", span) from None
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                if isinstance(v, float) or v < 0:
                    raise EinRuntimeError(
                        f"rank {name} = {_expr_text(expr)} is not a non-negative integer with "
                        + ", ".join(f"{k} = {ext[k]}" for k in sorted(_names(expr)) if k in ext)
                        + (" (use ceil(a / b) to allow a partial last tile)" if "/" in
                           _expr_text(expr) else ""), span)
                if name in observed and observed[name] != v:
                    raise EinRuntimeError(
                        f"rank {name} = {v} from its declaration, but {observed[name]} from "
                        f"{self.extent_source[name]}", span)
                ext[name] = v
            if len(rest) == len(pending):
                break
            pending = rest
        for name, expr, span in pending:
            if name not in plan["needed_ranks"]:
                continue  # declared but unused: no extent needed
            raise EinRuntimeError(f"the extent of rank {name} is not bound: no input has an axis "
                                  "of that rank and it has no declared value", span)
        return ext

    # ---------------------------------------------------------------- running
    def run(self, threads=None):
        """Run the cascade; query chunks are independent, so they may run on `threads`
        threads (NumPy releases the GIL inside its kernels). The default is 1: BLAS already
        uses every core for the contractions, and more threads oversubscribe them."""
        plan = self.plan
        self.var_ext = {r.lower(): n for r, n in self.extents.items()}
        self.exprs = {}
        self.access_vars = {}
        self.access_plans = {}
        outs = {}
        for name, axes, dtype in plan["outputs"]:
            shape = tuple(self.var_ext[v] for v in axes)
            outs[name] = np.zeros(shape, dtype=_np_dtype(dtype, self.dtype))
        threads = threads or 1
        chunk_var, chunk = self._choose_chunk(threads)
        starts = [0] if chunk_var is None else range(0, max(1, self.var_ext[chunk_var]), chunk)
        self.tensors = dict(self.inputs)
        self.state = {}
        pre, blocks = self._hoist(chunk_var)
        for block in pre:
            self._run_block(block, {})
        hoisted = dict(self.tensors)

        def one_chunk(start):
            r = copy.copy(self)  # its own tensors and running state; shared plan and caches
            r.tensors = dict(hoisted)
            r.state = {}
            dom = {}
            if chunk_var is not None:
                dom[chunk_var] = (start, min(start + chunk, self.var_ext[chunk_var]))
            for block in blocks:
                r._run_block(block, dom)
            for name, axes, dtype in plan["outputs"]:
                r._collect_output(outs, name, axes, dtype, dom)

        if threads > 1 and len(starts) > 1:
            with ThreadPoolExecutor(max_workers=min(threads, len(starts))) as pool:
                for f in [pool.submit(one_chunk, s) for s in starts]:
                    f.result()
        else:
            for start in starts:
                one_chunk(start)
        return {name: outs[name] for name, _, _ in plan["outputs"]}

    def _hoist(self, chunk_var):
        """Split the blocks: statements independent of the chunk rank run once, up front."""
        blocks = self.plan["blocks"]
        if chunk_var is None:
            return (), blocks
        pre, rest, hoisted = [], [], set(self.inputs)
        for b in blocks:
            if b[0] == "stmt":
                s = self.stmts[b[1]]
                if chunk_var not in s["dep_vars"] and all(t in hoisted for t in s["reads"]) \
                        and s["kind"] == "plain":
                    pre.append(b)
                    hoisted.add(s["tensor"])
                    continue
            rest.append(b)
        return pre, rest

    def _choose_chunk(self, threads=1):
        best = None
        for v in self.plan["chunk_candidates"]:
            n = self.var_ext[v]
            if best is None or n > self.var_ext[best]:
                best = v
        if best is None or self.var_ext[best] <= 1:
            return None, 0
        per_unit = 1
        for s in self.stmts:
            if best not in s["materialized"]:
                continue  # its size does not grow with the chunk
            size = 1
            for v in s["materialized"]:
                if v != best and v not in s["loop_vars"]:
                    size *= max(1, self.var_ext[v])
            per_unit = max(per_unit, size)
        chunk = max(1, CHUNK_ELEMENTS // per_unit)
        if any(s["filter"] is not None and best in _names(s["filter"]) for s in self.stmts):
            # a filter on the chunk rank (a causal or window mask): smaller chunks let whole
            # (tile, chunk) blocks fall outside the filter, and those are skipped
            chunk = min(chunk, FILTERED_CHUNK)
        n = self.var_ext[best]
        if threads > 1 and n >= 2 * threads:  # at least one chunk per thread
            chunk = min(chunk, -(-n // threads))
        if chunk >= n:
            return None, 0
        return best, chunk

    def _run_block(self, block, dom):
        if block[0] == "stmt":
            self._exec(self.stmts[block[1]], dom)
            return
        _, var, ids, iters, skip = block
        n = self.var_ext[var]
        verified = False  # the last fully masked iteration left the running state unchanged
        for i in range(n):
            d = dict(dom)
            d[var] = (i, i + 1)
            masked = bool(skip) and all(self._box(self.stmts[sid]["filter"], d) is not None
                                        and not self._box(self.stmts[sid]["filter"], d)[0]
                                        for sid in skip)
            if masked and verified:
                continue  # same state, same (masked) update: the iteration is the identity
            before = [self.state[t]["prev"] for t in iters] if masked else None
            for sid in ids:
                self._exec(self.stmts[sid], d)
            for t in iters:
                self.state[t]["prev"] = self.state[t].pop("next")
            verified = masked and all(_same(a, self.state[t]["prev"]) for a, t in zip(before, iters))
        for t in iters:
            self.state[t]["final"] = self.state[t]["prev"]
        for sid in ids:
            buf = self.tensors.get(self.stmts[sid]["tensor"])
            if isinstance(buf, _FullBuffer) and buf.mask is not None and buf.mask.all():
                buf.mask = None

    def _collect_output(self, outs, name, axes, dtype, dom):
        st = self._read_plain(name)
        if isinstance(st, _Absentable):
            st = st.stored
        if st is None or st.arr is None:
            return
        arr = st.arr if st.mask is None else np.where(st.mask, st.arr, 0)  # rule 6
        idx = tuple(slice(o, o + arr.shape[k]) for k, o in enumerate(st.offsets))
        outs[name][idx] = np.broadcast_to(arr, tuple(i.stop - i.start for i in idx))

    def _read_plain(self, name):
        if name in self.tensors:
            return self.tensors[name]
        if name in self.state:
            return self.state[name].get("final")
        return None

    # ---------------------------------------------------------------- one statement
    def _exec(self, s, dom):
        try:
            self._exec_unchecked(s, dom)
        except (OverflowError, ZeroDivisionError, ValueError, MemoryError) as exc:
            # numbers the cascade cannot represent (index arithmetic past int64, a math
            # domain error in a constant): a located error, not a traceback
            raise EinRuntimeError(f"cannot evaluate this statement: {type(exc).__name__}: {exc}",
                                  s["span"]) from None

    def _exec_unchecked(self, s, dom):
        space = s["space"]
        sizes = [self._dom(v, dom)[1] - self._dom(v, dom)[0] for v in space]
        ctx = (space, dom, sizes)
        val = self._evaluate(s, ctx)
        lhs = s["lhs"]
        kept = [v for v in space if v in s["out_vars"]]
        # val is over `kept` (full rank in that order); broadcast to the LHS domain
        out_axes = [v for v, kind in lhs if kind != "init"]
        shape = tuple(self._dom(v, dom)[1] - self._dom(v, dom)[0] for v in out_axes)
        offsets = tuple(self._dom(v, dom)[0] for v in out_axes)
        if val.arr is not None:
            perm = [kept.index(v) for v in out_axes]
            arr = np.broadcast_to(val.arr.transpose(perm), shape)
            mask = None if val.mask is None else np.broadcast_to(val.mask.transpose(perm), shape)
        else:
            arr = mask = None
        name = s["tensor"]
        kind = s["kind"]
        if kind == "plain":
            self._store_plain(s, name, arr, mask, offsets, shape, dom)
            return
        # iterative: the running state drops the iterative axis
        iv = s["iter_var"]
        off = tuple(o for v, o in zip(out_axes, offsets) if v != iv)
        shp = tuple(n for v, n in zip(out_axes, shape) if v != iv)
        if arr is not None and kind == "next":
            arr = arr.reshape(shp)
            mask = None if mask is None else mask.reshape(shp)
        slot = "prev" if kind == "init" else "next"
        entry = self.state.setdefault(name, {})
        entry[slot] = _Absentable(Stored(arr, mask, off), shp)
        if kind == "init":
            entry["initial"] = entry[slot]

    def _store_plain(self, s, name, arr, mask, offsets, shape, dom):
        store = s["store"]
        if store == "full":
            full = self.tensors.get(name)
            if full is None or not isinstance(full, _FullBuffer):
                full_shape, full_off = [], []
                for v in s["lhs_axes"]:
                    lo, hi = self._dom(v, dom, ignore_loop=True)
                    full_shape.append(hi - lo)
                    full_off.append(lo)
                full = _FullBuffer(np.zeros(full_shape, self.dtype),
                                   np.zeros(full_shape, bool), tuple(full_off))
                self.tensors[name] = full
            idx = tuple(slice(o - fo, o - fo + n) for o, fo, n in zip(offsets, full.offsets, shape))
            if arr is None:
                full.mask[idx] = False
            else:
                full.arr[idx] = arr
                full.mask[idx] = True if mask is None else mask
            return
        self.tensors[name] = _Absentable(Stored(arr, mask, offsets), shape)

    def _dom(self, v, dom, ignore_loop=False):
        if v in dom and not (ignore_loop and dom[v][1] - dom[v][0] == 1 and v in self.plan["loop_vars"]):
            return dom[v]
        return (0, self.var_ext[v])

    # ---------------------------------------------------------------- evaluation
    def _evaluate(self, s, ctx):
        space, dom, sizes = ctx
        fmask = None
        if s["filter"] is not None:
            fmask = self._predicate(s["filter"], ctx)
            if fmask is False:
                return ABSENT
            if fmask is True:
                fmask = None
        reds = s["reduced"]
        cur = list(space)
        if reds and reds[0][0] == "sum":
            val, cur = self._sum_stage(s, reds[0][1], fmask, ctx)
            fmask = None
            reds = reds[1:]
        else:
            val = self._eval(s["rhs"], ctx)
            if fmask is not None:
                val = _apply_mask(val, fmask)
        for op, vars_ in reds:
            val, cur = _reduce(val, cur, vars_, op, self._sizes(cur, dom))
        return val

    def _sizes(self, vars_, dom):
        return [self._dom(v, dom)[1] - self._dom(v, dom)[0] for v in vars_]

    def _sum_stage(self, s, sum_vars, fmask, ctx):
        space, dom, sizes = ctx
        out_vars = [v for v in space if v not in sum_vars]
        sum_axes = tuple(space.index(v) for v in sum_vars)
        if any(sizes[k] == 0 for k in sum_axes):
            return ABSENT, out_vars
        factors, const = _factorize(s["rhs"])
        if fmask is not None and fmask.ndim == 0:
            fmask = None
        evaluated = self._finite_factors(factors, ctx, fmask is not None) \
            if len(factors) >= 2 and math.isfinite(const) else None
        if evaluated is not None:
            vals = []
            for (node, recip), v in zip(factors, evaluated):
                if v.arr is None:
                    return ABSENT, out_vars
                if v.arr.size == 1 and v.mask is None:  # a constant factor (`sqrt(E)`)
                    c = float(v.arr.reshape(()))
                    const = (0.0 if c == 0 else const / c) if recip else const * c
                    continue
                if recip:
                    v = Val(_div(np.ones((), self.dtype), v.arr), v.mask)
                vals.append(v)
            if len(vals) < 2:
                val = Val(vals[0].arr * self.dtype(const), vals[0].mask) if vals else Val(
                    np.full((1,) * len(space), const, self.dtype))
                if fmask is not None:
                    val = _apply_mask(val, fmask)
                val, cur = _reduce(val, list(space), sum_vars, "sum", list(sizes))
                return val, cur
            filt_vars = set() if fmask is None else {space[k] for k in range(len(space))
                                                       if fmask.shape[k] != 1}
            filt_inside = fmask is not None and bool(filt_vars & set(sum_vars))
            ops, pops, any_mask = [], [], False
            for v in vals:
                a, vs = _squeeze(v.arr, space)
                if v.mask is not None:
                    any_mask = True
                    m, mvs = _squeeze(np.broadcast_to(v.mask, v.arr.shape), space)
                    a = np.where(m, a, 0)
                    pops.append((m, mvs))
                ops.append((a, vs))
            if filt_inside:
                m, mvs = _squeeze(fmask, space)
                ops.append((m.astype(self.dtype), mvs))
                pops.append((m, mvs))
            # a moderate constant (`/ sqrt(E)`) scales the smallest operand, not the product;
            # an extreme one is applied after, so that it cannot overflow an operand
            early = const != 1.0 and 2.0 ** -20 <= abs(const) <= 2.0 ** 20
            if early:
                k = min(range(len(ops)), key=lambda i: ops[i][0].size)
                ops[k] = (ops[k][0] * self.dtype(const), ops[k][1])
            arr, got = _contract(ops, out_vars)
            arr = _expand(arr, got, out_vars)
            # a summed variable that no operand carries (a filter true on the whole box, a
            # read absent everywhere under a union) still counts once per point
            carried = {v for _, vs in ops for v in vs}
            mult = math.prod(sizes[space.index(v)] for v in sum_vars if v not in carried)
            if mult != 1:
                arr = arr * self.dtype(mult)
            if const != 1.0 and not early:
                arr = arr * self.dtype(const)
            mask = None
            if len(pops) == 1:  # one masked operand: present where any summed point is
                # (its vars and out_vars are both in space order: no transpose needed)
                m, mvs = pops[0]
                drop = tuple(k for k, v in enumerate(mvs) if v not in out_vars)
                m = m.any(axis=drop) if drop else m
                mask = _expand(m, tuple(v for v in mvs if v in out_vars), out_vars)
            elif any_mask or filt_inside:
                p, pg = _contract([(m.astype(self.dtype), mvs) for m, mvs in pops], out_vars)
                mask = _expand(p, pg, out_vars) > 0
            val = Val(arr, mask)
            if fmask is not None and not filt_inside:
                val = _apply_mask(val, _drop_axes(fmask, sum_axes))
            return val, out_vars
        val = self._eval(s["rhs"], ctx)
        if fmask is not None:
            val = _apply_mask(val, fmask)
        val, cur = _reduce(val, list(space), sum_vars, "sum", list(sizes))
        return val, cur

    def _finite_factors(self, factors, ctx, filtered):
        """The factors' values when the matmul path is exact, else None. That path reorders
        the sum of products (a variable private to one factor is summed first, constants
        and reciprocals are applied to the whole, absent points are filled with 0): exact
        for finite values only. Any inf or NaN (point by point, 0 * inf is NaN and x / 0 is
        0) takes the dense path, which applies the rules point by point."""
        vals = [self._eval(node, ctx) for node, _ in factors]
        for v in vals:
            if v.arr is not None and v.arr.dtype.kind == "f" and not _all_finite(v.arr):
                return None
        return vals

    def _predicate(self, node, ctx):
        """Filter as a boolean array over the space (or True/False when uniform).

        An interval bound over the domain box decides most tiles without materializing
        the mask: a tile entirely inside or outside the filter costs no mask arithmetic.
        """
        box = self._box(node, ctx[1])
        if box is not None:
            can_true, can_false = box
            if not can_true:
                return False
            if not can_false:
                return True
        r = self._pred(node, ctx)
        if isinstance(r, (bool, np.bool_)):
            return bool(r)
        if not r.any():
            return False
        if r.all():
            return True
        return r

    def _pred(self, node, ctx):
        op = node[0]
        if op == "and":
            return np.logical_and(self._pred(node[1], ctx), self._pred(node[2], ctx))
        if op == "or":
            return np.logical_or(self._pred(node[1], ctx), self._pred(node[2], ctx))
        if op == "not":
            return np.logical_not(self._pred(node[1], ctx))
        a = self._scalar_or_coords(node[2], ctx)
        b = self._scalar_or_coords(node[3], ctx)
        return {"<": np.less, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal,
                ">=": np.greater_equal, ">": np.greater}[node[1]](a, b)

    def _box(self, node, dom):
        """(can be true, can be false) of a predicate over the domain box, or None."""
        op = node[0]
        if op in ("and", "or"):
            a, b = self._box(node[1], dom), self._box(node[2], dom)
            if a is None or b is None:
                return None
            if op == "and":
                return (a[0] and b[0], a[1] or b[1])
            return (a[0] or b[0], a[1] and b[1])
        if op == "not":
            a = self._box(node[1], dom)
            return None if a is None else (a[1], a[0])
        try:
            ca, ka = self._affine(node[2])
            cb, kb = self._affine(node[3])
        except (KeyError, TypeError, ValueError, EinRuntimeError):
            return None
        lo = hi = ka - kb  # bounds of (left - right) over the box
        for v, c in list(ca.items()) + [(v, -c) for v, c in cb.items()]:
            if not c:
                continue
            a, b = self._dom(v, dom)
            if b <= a:
                return (False, False)
            lo += min(c * a, c * (b - 1))
            hi += max(c * a, c * (b - 1))
        cmp = node[1]
        if cmp == "<":
            return (lo < 0, hi >= 0)
        if cmp == "<=":
            return (lo <= 0, hi > 0)
        if cmp == ">":
            return (hi > 0, lo <= 0)
        if cmp == ">=":
            return (hi >= 0, lo < 0)
        if cmp == "==":
            return (lo <= 0 <= hi, not (lo == hi == 0))
        return (not (lo == hi == 0), lo <= 0 <= hi)  # !=

    def _scalar_or_coords(self, node, ctx):
        v = self._eval(node, ctx, exact=True)
        return v.arr

    def _coords(self, var, ctx, dtype):
        space, dom, sizes = ctx
        lo, hi = self._dom(var, dom)
        shape = [1] * len(space)
        shape[space.index(var)] = hi - lo
        return np.arange(lo, hi, dtype=dtype).reshape(shape)

    def _eval(self, node, ctx, exact=False):
        """Evaluate an expression to a `Val` over the space (exact: int64 coordinates)."""
        op = node[0]
        nd = len(ctx[0])
        if op == "num":
            return Val(np.full((1,) * nd, node[1], dtype=np.int64 if exact and node[1] == int(
                node[1]) and math.isfinite(node[1]) else self.dtype))
        if op == "var":
            return Val(self._coords(node[1], ctx, np.int64 if exact else self.dtype))
        if op == "extent":
            return Val(np.full((1,) * nd, self.extents[node[1]],
                               dtype=np.int64 if exact else self.dtype))
        if op == "param":
            v = self.params[node[1]]
            ex = exact and v == int(v)
            return Val(np.full((1,) * nd, int(v) if ex else v,
                               dtype=np.int64 if ex else self.dtype))
        if op == "access":
            return self._access(node, ctx)
        if op == "neg":
            a = self._eval(node[1], ctx, exact)
            return a if a.arr is None else Val(-a.arr, a.mask)
        if op == "call":
            fn = node[1]
            args = [self._eval(a, ctx, exact) for a in node[2]]
            if fn == "max":
                return _union(args[0], args[1], -np.inf, np.maximum)
            if fn == "min":
                return _union(args[0], args[1], np.inf, np.minimum)
            with np.errstate(all="ignore"):
                a = args[0]
                if fn in _IN_PLACE and a.arr is not None and node[2][0][0] == "bin" and \
                        node[2][0][1] in ("-", "*", "/") and _owned(a.arr):
                    # the operand is a temporary of this expression: no new array
                    return Val(_UNARY[fn](a.arr, out=a.arr), a.mask)
                return _intersect(_UNARY[fn], a)
        if op == "bin":
            a = self._eval(node[2], ctx, exact)
            b = self._eval(node[3], ctx, exact)
            o = node[1]
            if o == "+":
                return _union(a, b, 0, np.add)
            if exact and o == "-":
                return _intersect(np.subtract, a, b)
            if exact and o in ("//", "%"):
                return _intersect(np.floor_divide if o == "//" else np.mod, a, b)
            with np.errstate(all="ignore"):
                return _intersect(_BINARY[o], a, b)
        raise AssertionError(f"unknown node {op}")  # pragma: no cover

    # ---------------------------------------------------------------- tensor reads
    def _affine(self, idx):
        """(coefficients by var, constant) of an index expression, with extents/params bound."""
        key = id(idx)
        hit = self.exprs.get(key)
        if hit is not None:
            return hit
        res = _linear(idx, self.extents, self.params)
        self.exprs[key] = res
        return res

    def _access(self, node, ctx):
        space, dom, sizes = ctx
        _, name, indices, iter_axis, iter_kind = node
        if iter_axis is not None:
            entry = self.state[name]
            slot = {"prev": "prev", "next": "next", "final": "final", "initial": "initial"}[iter_kind]
            st = entry[slot]
            indices = indices[:iter_axis] + indices[iter_axis + 1:]
        else:
            st = self.tensors[name]
        if isinstance(st, _Absentable):
            shape = st.shape
            st = st.stored
            if st.arr is None:
                return ABSENT
        elif isinstance(st, _FullBuffer):
            shape = st.arr.shape
        else:
            shape = st.arr.shape
        arr, mask, offs = st.arr, st.mask, st.offsets
        # The read's plan depends only on the access, the space and which of its variables
        # are pinned to one coordinate (a loop's tile index): cached across tiles and chunks.
        vars_key = self.access_vars.get(id(node))
        if vars_key is None:
            vars_key = self._access_vars(node, indices)
        key = (id(node), space, tuple(self._dom(v, dom)[1] - self._dom(v, dom)[0] == 1
                                      for v in vars_key))
        plan = self.access_plans.get(key)
        if plan is None:
            plan = self._access_plan(indices, space, dom)
            self.access_plans[key] = plan
        if plan is False:
            return self._gather_read(arr, mask, offs, shape, indices, ctx)
        return self._slice_read(arr, mask, offs, shape, plan, ctx)

    def _access_vars(self, node, indices):
        names = []
        for idx in indices:
            try:
                coeffs, _ = self._affine(idx)
            except _NotAffine:
                continue
            names += [v for v, c in coeffs.items() if c and v not in names]
        self.access_vars[id(node)] = tuple(names)
        return tuple(names)

    def _access_plan(self, indices, space, dom):
        """Per axis (free variable or None, constant, pinned terms), and the axis order;
        False when the read needs a gather (a variable twice, a stride, `//`, `%`)."""
        axes = []
        used = set()
        for idx in indices:
            try:
                coeffs, const = self._affine(idx)
            except _NotAffine:
                return False
            free, pinned = None, []
            for v, c in coeffs.items():
                if not c:
                    continue
                lo, hi = self._dom(v, dom)
                if hi - lo == 1:
                    pinned.append((v, c))
                elif c == 1 and free is None and v not in used:
                    free = v
                else:
                    return False
            if free is not None:
                used.add(free)
            axes.append((free, const, tuple(pinned)))
        keep = tuple(k for k, (v, _, _) in enumerate(axes) if v is not None)
        vars_ = [axes[k][0] for k in keep]
        perm = tuple(sorted(range(len(vars_)), key=lambda k: space.index(vars_[k])))
        where = tuple(space.index(vars_[k]) for k in perm)  # axis of the space, after perm
        return tuple(axes), keep, perm, where

    def _slice_read(self, arr, mask, offs, shape, plan, ctx):
        space, dom, sizes = ctx
        axes, keep, perm, where = plan
        sl, pads, need_pad = [], [], False
        for k, (var, c, pinned) in enumerate(axes):
            for v, coeff in pinned:
                c += coeff * self._dom(v, dom)[0]
            lo_t = offs[k]
            hi_t = lo_t + shape[k]  # coordinates stored
            if var is None:
                want_lo, want_hi = c, c + 1
            else:
                lo, hi = self._dom(var, dom)
                want_lo, want_hi = lo + c, hi + c
            a = want_lo if want_lo > lo_t else lo_t
            b = want_hi if want_hi < hi_t else hi_t
            if b <= a:
                return ABSENT
            sl.append(slice(a - lo_t, b - lo_t))
            if a != want_lo or b != want_hi:
                need_pad = True
            pads.append((a - want_lo, want_hi - b))
        if arr.ndim and arr.shape != tuple(shape):  # a broadcast (size-1) stored axis
            sl = [slice(None) if arr.shape[k] == 1 else s for k, s in enumerate(sl)]
        a = arr[tuple(sl)]
        m = None if mask is None else mask[tuple(sl)]
        if need_pad:  # out-of-range coordinates read absent points
            m = np.pad(np.ones(a.shape, bool) if m is None else m, pads)
            a = np.pad(a, pads)
        # axes with a constant index drop; the rest are put in the order of the space
        if len(keep) != len(axes):
            a = a.reshape([a.shape[k] for k in keep])
            m = None if m is None else m.reshape([m.shape[k] for k in keep])
        a = a.transpose(perm)
        m = None if m is None else m.transpose(perm)
        shape_full = [1] * len(space)
        for j, ax in enumerate(where):
            shape_full[ax] = a.shape[j]
        a = a.reshape(shape_full)
        m = None if m is None else m.reshape(shape_full)
        if a.dtype != self.dtype:
            a = a.astype(self.dtype)
        return Val(a, m)

    def _gather_read(self, arr, mask, offs, shape, indices, ctx):
        space, dom, sizes = ctx
        valid = True
        idxs = []
        for k, idx in enumerate(indices):
            try:
                coeffs, const = self._affine(idx)
                ix = np.full((1,) * len(space), const - offs[k], dtype=np.int64)
                for v, c in coeffs.items():
                    if c:
                        ix = ix + c * self._coords(v, ctx, np.int64)
            except _NotAffine:  # quasi-affine: evaluate the index point by point
                ix = self._eval(idx, ctx, exact=True).arr - offs[k]
            ok = (ix >= 0) & (ix < shape[k])
            valid = ok if valid is True else valid & ok
            idxs.append(np.clip(ix, 0, max(0, shape[k] - 1)))
        if arr.ndim and any(arr.shape[k] == 1 and shape[k] != 1 for k in range(arr.ndim)):
            idxs = [np.zeros_like(ix) if arr.shape[k] == 1 else ix for k, ix in enumerate(idxs)]
        a = arr[tuple(idxs)] if idxs else arr.reshape((1,) * len(space))
        m = None if mask is None else (mask[tuple(idxs)] if idxs else mask.reshape((1,) * len(space)))
        if valid is not True and not valid.all():
            if not valid.any():
                return ABSENT
            m = valid if m is None else (m & valid)
        if a.dtype != self.dtype:
            a = a.astype(self.dtype)
        return Val(a, m)


class _Absentable:
    """A stored slice that may be entirely absent (`stored.arr is None`), with its shape."""

    __slots__ = ("stored", "shape")

    def __init__(self, stored, shape):
        self.stored = stored
        self.shape = shape


class _FullBuffer(Stored):
    """A tensor written slice by slice inside a loop and read whole afterwards."""


# --------------------------------------------------------------------------- helpers
def _same(a, b):
    """Whether two running-state values are identical (values and presence)."""
    sa, sb = a.stored, b.stored
    if (sa.arr is None) != (sb.arr is None):
        return False
    if sa.arr is None:
        return True
    if (sa.mask is None) != (sb.mask is None):
        return False
    if sa.mask is not None and not np.array_equal(sa.mask, sb.mask):
        return False
    return np.array_equal(sa.arr, sb.arr, equal_nan=True)


def _apply_mask(val, fmask):
    if val.arr is None:
        return val
    if val.mask is None:
        return Val(val.arr, fmask)
    return Val(val.arr, val.mask & fmask)


def _reduce(val, cur, vars_, op, sizes):
    """Reduce `vars_` with `op` over the present points (rule 2)."""
    axes = tuple(cur.index(v) for v in vars_)
    rest = [v for v in cur if v not in vars_]
    if val.arr is None or any(sizes[k] == 0 for k in axes):
        return ABSENT, rest
    arr, mask = val.arr, val.mask
    full = list(np.broadcast_shapes(arr.shape, mask.shape) if mask is not None else arr.shape)
    for k in axes:
        full[k] = sizes[k]  # a value that does not vary along a reduced rank still repeats
    full = tuple(full)
    fill = {"sum": 0, "max": -np.inf, "min": np.inf, "prod": 1}[op]
    fn = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}[op]
    if mask is not None:
        arr = np.where(mask, arr, arr.dtype.type(fill))
    else:
        arr = np.broadcast_to(arr, full)
    # broadcast axes that are reduced: a sum over a broadcast axis multiplies by its length
    arr = np.broadcast_to(arr, full) if arr.shape != full else arr
    out = fn(arr, axis=axes)
    new_mask = None
    if mask is not None:
        new_mask = np.broadcast_to(mask, full).any(axis=axes)
        if not new_mask.any():
            return ABSENT, rest
        if new_mask.all():
            new_mask = None
    return Val(np.asarray(out), new_mask), rest


def _factorize(node):
    """Split a product `a * b / c * 2` into factors [(node, is_reciprocal)] and a constant."""
    factors, const = [], 1.0

    def go(n, recip):
        nonlocal const
        if n[0] == "bin" and n[1] == "*":
            go(n[2], recip)
            go(n[3], recip)
        elif n[0] == "bin" and n[1] == "/":
            go(n[2], recip)
            go(n[3], not recip)
        elif n[0] == "neg":
            const = -const
            go(n[1], recip)
        elif n[0] == "num" and n[1] != 0 and math.isfinite(n[1]):
            const = const / n[1] if recip else const * n[1]
        else:
            factors.append((n, recip))

    go(node, False)
    return factors, const


def _squeeze(arr, space):
    """Drop the size-1 broadcast axes of a full-rank array; return it with its vars."""
    keep = [k for k in range(arr.ndim) if arr.shape[k] != 1]
    vs = tuple(space[k] for k in keep)
    return arr.reshape([arr.shape[k] for k in keep]), vs


def _expand(arr, got, out_vars):
    shape = [1] * len(out_vars)
    for k, v in enumerate(got):
        shape[out_vars.index(v)] = arr.shape[k]
    return arr.reshape(shape)


def _drop_axes(mask, axes):
    if mask is None:
        return None
    return mask.any(axis=axes) if axes else mask


def _to_numpy(x, dtype):
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    if a.dtype != dtype:
        a = a.astype(dtype)
    return a


def _np_dtype(name, compute):
    if name == "f64":
        return np.float64
    if name == "f16":
        return np.float16
    if name == "bf16":
        try:
            import ml_dtypes
            return ml_dtypes.bfloat16
        except ImportError:  # pragma: no cover - ml_dtypes is a dependency of einsumc
            return np.float32
    return np.float32


def _const(expr, extents, params):
    op = expr[0]
    if op == "num":
        v = expr[1]
        return int(v) if math.isfinite(v) and v == int(v) else v
    if op == "extent":
        return extents[expr[1]]
    if op == "param":
        return params[expr[1]]
    if op == "neg":
        return -_const(expr[1], extents, params)
    if op == "call":
        args = [_const(a, extents, params) for a in expr[2]]
        fn = expr[1]
        if fn == "ceil":
            return args[0] if isinstance(args[0], int) else int(math.ceil(args[0]))
        return {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "tanh": math.tanh,
                "abs": abs, "max": max, "min": min,
                "sigmoid": lambda x: 1 / (1 + math.exp(-x))}[fn](*args)
    if op == "bin":
        a, b = _const(expr[2], extents, params), _const(expr[3], extents, params)
        o = expr[1]
        if o == "+":
            return a + b
        if o == "-":
            return a - b
        if o == "*":
            return a * b
        if o == "/":
            if isinstance(a, int) and isinstance(b, int):
                if b == 0:
                    raise ZeroDivisionError
                return a // b if a % b == 0 else a / b
            return a / b
        if o == "//":
            return a // b if isinstance(a, int) and isinstance(b, int) else math.floor(a / b)
        if o == "%":
            return a % b
    raise KeyError(op)


class _NotAffine(ValueError):
    """A quasi-affine index (`p // P0`, `p % P0`): read through the general gather."""


def _linear(expr, extents, params):
    """({var: int coefficient}, int constant) of an affine index expression."""
    op = expr[0]
    if op == "var":
        return {expr[1]: 1}, 0
    if op in ("num", "extent", "param", "call"):
        return {}, int(_const(expr, extents, params))
    if op == "neg":
        c, k = _linear(expr[1], extents, params)
        return {v: -x for v, x in c.items()}, -k
    if op == "bin":
        a, ka = _linear(expr[2], extents, params)
        b, kb = _linear(expr[3], extents, params)
        o = expr[1]
        if o in "+-":
            s = 1 if o == "+" else -1
            out = dict(a)
            for v, x in b.items():
                out[v] = out.get(v, 0) + s * x
            return out, ka + s * kb
        if o == "*":
            if a and b:  # pragma: no cover - rejected by the checker
                raise EinRuntimeError("non-affine index")
            if a:
                return {v: x * kb for v, x in a.items()}, ka * kb
            return {v: x * ka for v, x in b.items()}, ka * kb
        if a or b:
            raise _NotAffine(o)
        return {}, int(_const(expr, extents, params))
    raise KeyError(op)  # pragma: no cover


def _names(expr):
    """Names of extents, params and variables in an encoded expression."""
    op = expr[0]
    if op in ("extent", "param", "var"):
        return {expr[1]}
    if op in ("call", "access"):
        out = set()
        for a in expr[2]:
            out |= _names(a)
        return out
    out = set()
    for x in expr[1:]:
        if isinstance(x, tuple) and x and isinstance(x[0], str):
            out |= _names(x)
    return out


def _expr_text(expr):
    op = expr[0]
    if op == "num":
        v = expr[1]
        return str(int(v)) if math.isfinite(v) and v == int(v) else repr(v)
    if op in ("extent", "param", "var"):
        return expr[1]
    if op == "neg":
        return "-" + _expr_text(expr[1])
    if op == "call":
        return f"{expr[1]}(" + ", ".join(_expr_text(a) for a in expr[2]) + ")"
    if op == "bin":
        return f"{_expr_text(expr[2])} {expr[1]} {_expr_text(expr[3])}"
    return "?"


def run_plan(plan, inputs, params=None, threads=None):
    """Run a plan: inputs by name (arrays or torch tensors), run-time params by name."""
    r = Runner(plan)
    r.bind(inputs, params or {})
    return r.run(threads)
