"""Lower a checked `Program` to a NumPy *plan*: plain data that `runtime.py` executes.

The plan holds the statements as nested tuples, the loop structure (which statements run
per coordinate of an iterative rank, and which tensors they carry), the store policy of
each tensor defined in a loop (a slice per iteration, or a full buffer when read outside
the loop), and the ranks along which the whole cascade may run in chunks.
"""
from __future__ import annotations

from ...diagnostics import EinsumcError, error
from ...ir import nodes as N
from ...ir.program import Program


def encode(e: N.Expr, prog: Program | None = None) -> tuple:
    """An expression as nested tuples (the runtime's input)."""
    if isinstance(e, N.Num):
        return ("num", float(e.value))
    if isinstance(e, N.Var):
        return ("var", e.name)
    if isinstance(e, N.Extent):
        return ("extent", e.name)
    if isinstance(e, N.Param):
        return ("param", e.name)
    if isinstance(e, N.Access):
        info = prog.tensors[e.tensor] if prog is not None else None
        k = info.iter_axis if info is not None else None
        kind = None
        if k is not None:
            kind = _iterate_kind(e.indices[k], info.axes[k])
        return ("access", e.tensor, tuple(encode(i, prog) for i in e.indices), k, kind)
    if isinstance(e, N.BinOp):
        if e.op in N.CMP_OPS:
            return ("cmp", e.op, encode(e.left, prog), encode(e.right, prog))
        if e.op in N.BOOL_OPS:
            return (e.op, encode(e.left, prog), encode(e.right, prog))
        return ("bin", e.op, encode(e.left, prog), encode(e.right, prog))
    if isinstance(e, N.Unary):
        return ("not" if e.op == "not" else "neg", encode(e.operand, prog))
    if isinstance(e, N.Call):
        return ("call", e.fn, tuple(encode(a, prog) for a in e.args))
    raise TypeError(f"cannot encode {e!r}")  # pragma: no cover - the checker resolved names


def _iterate_kind(ix: N.Expr, var: str) -> str:
    return N.iterate_read(ix)


def _span(s) -> tuple | None:
    return None if s is None else (s.line, s.col, s.start, s.end)




def _skippable(prog: Program, var: str, ids: list[int], full: set[str]) -> tuple[int, ...]:
    """The filtered statements of a loop whose iterations may be skipped when all of them
    are fully masked, or () when skipping could change the result.

    Under "every filter in the body is false", absent points propagate (rule 3): a filtered
    statement is absent, a map with an absent operand is absent except `+`/`max`/`min`,
    which yield the other operand. Skipping is sound when, under that assumption, no running
    state depends on the iteration (on data read at the loop coordinate, or on the loop
    variable as a value) and no tensor kept whole is written: each masked iteration is then
    the same function of the state, and the runtime skips once one such iteration left the
    state unchanged.
    """
    einsums = prog.einsums
    filtered = tuple(i for i in ids if einsums[i].filter is not None)
    if not filtered:
        return ()
    body = {einsums[i].tensor for i in ids}
    absent: set[str] = set()
    tainted: set[str] = set()

    def walk(x) -> tuple[bool, bool]:  # (absent, depends on the iteration)
        if isinstance(x, N.Var):
            return False, x.name == var
        if isinstance(x, N.Access):
            info = prog.tensors[x.tensor]
            if info.iter_axis is not None and x.tensor in body:
                return False, x.tensor in tainted
            if x.tensor in body:
                return x.tensor in absent, x.tensor in tainted
            return False, any(var in N.value_vars(ix) for ix in x.indices)
        if isinstance(x, N.BinOp) and x.op == "+" or isinstance(x, N.Call) and x.fn in ("max", "min"):
            parts = [walk(c) for c in N.children(x)]
            live = [p for p in parts if not p[0]]
            return (not live, any(p[1] for p in live))
        parts = [walk(c) for c in N.children(x)]
        return (any(p[0] for p in parts), any(p[1] for p in parts))

    for i in ids:
        e = einsums[i]
        if e.filter is not None:
            absent.add(e.tensor)
            continue
        a, t = walk(e.rhs)
        if a:
            absent.add(e.tensor)
        elif t:
            if e.kind == "recur" or e.tensor in full:
                return ()
            tainted.add(e.tensor)
        elif e.tensor in full:
            return ()
    return filtered


def _materialized(e: N.Einsum) -> tuple[str, ...]:
    """Variables of the largest array evaluating `e` creates (sizes the query chunks).

    A sum of a product of two or more factors is contracted by matmuls, so only its result
    (the space less the summed variables) is created; anything else creates the whole space.
    """
    if e.reduced and e.reduced[0].op == "sum":
        factors = 0

        def count(x):
            nonlocal factors
            if isinstance(x, N.BinOp) and x.op in "*/":
                count(x.left)
                count(x.right)
            elif isinstance(x, N.Unary) and x.op == "-":
                count(x.operand)
            elif not isinstance(x, N.Num):
                factors += 1
        count(e.rhs)
        if factors >= 2:
            return tuple(v for v in e.space if v not in e.reduced[0].vars)
    return tuple(e.space)


def _needed_ranks(prog: Program) -> tuple[str, ...]:
    """Ranks whose extent the cascade uses (others may stay unbound)."""
    by_var = {r.var: r.name for r in prog.ranks}
    need: set[str] = set()
    for d in prog.inputs + prog.outputs:
        need |= {by_var[v] for v in d.indices}
    for e in prog.einsums:
        need |= {by_var[v] for v in e.space if v in by_var}
        need |= {by_var[i.var] for i in e.indices if i.var in by_var}
        for x in (e.rhs, e.filter):
            if x is not None:
                need |= {n.name for n in N.walk(x) if isinstance(n, N.Extent)}
    for p in prog.params:
        if p.value is not None:
            need |= {n.name for n in N.walk(p.value) if isinstance(n, N.Extent)}
    changed = True
    while changed:
        changed = False
        for r in prog.ranks:
            if r.name in need and r.extent is not None:
                more = {n.name for n in N.walk(r.extent) if isinstance(n, N.Extent)} - need
                if more:
                    need |= more
                    changed = True
    return tuple(sorted(need))


def lower(prog: Program) -> dict:
    """The NumPy plan of a checked program."""
    iter_vars = set(prog.iterative_vars)
    einsums = prog.einsums
    errors = []

    # ---- which statements run inside a loop over an iterative rank
    def loop_var(e: N.Einsum) -> str | None:
        if e.kind == "init":
            return None
        for v in e.lhs_vars:
            if v in iter_vars:
                return v
        return None

    blocks: list = []
    open_loop = None  # [var, [ids], set(defined tensors)]
    for i, e in enumerate(einsums):
        v = loop_var(e)
        reads_final = open_loop is not None and any(
            a.tensor in open_loop[2] and prog.tensors[a.tensor].iter_axis is not None
            and _iterate_kind(a.indices[prog.tensors[a.tensor].iter_axis],
                              prog.tensors[a.tensor].axes[prog.tensors[a.tensor].iter_axis])
            == "final" for a in N.reads(e))
        if v is not None:
            if open_loop is not None and open_loop[0] == v and not reads_final:
                open_loop[1].append(i)
                open_loop[2].add(e.tensor)
            else:
                if open_loop is not None:
                    blocks.append(open_loop)
                open_loop = [v, [i], {e.tensor}]
            continue
        if open_loop is not None and any(a.tensor in open_loop[2] for a in N.reads(e)):
            blocks.append(open_loop)
            open_loop = None
        blocks.append(("stmt", i))
    if open_loop is not None:
        blocks.append(open_loop)
    # hoisted statements were appended before the loop they interrupt: restore that order
    ordered: list = []
    pending_loop = None
    for b in blocks:
        ordered.append(b)
    block_of: dict[int, int] = {}
    for bi, b in enumerate(ordered):
        ids = b[1] if isinstance(b, list) else [b[1]]
        for i in ids:
            block_of[i] = bi
    del pending_loop

    # ---- store policy: a loop-defined tensor read outside its loop is kept whole
    defined_in: dict[str, int] = {}
    for i, e in enumerate(einsums):
        if e.kind == "plain":
            defined_in[e.tensor] = block_of[i]
    full: set[str] = set()
    for i, e in enumerate(einsums):
        for a in N.reads(e):
            t = a.tensor
            info = prog.tensors[t]
            if info.iter_axis is not None:
                kind = _iterate_kind(a.indices[info.iter_axis], info.axes[info.iter_axis])
                rec_block = next(block_of[j] for j in info.defined_by if einsums[j].kind == "recur")
                if kind in ("prev", "next") and block_of[i] != rec_block:
                    errors.append(error(
                        f"'{t}' is read at every iterate outside the loop of its recurrence; "
                        "only its final iterate can be read there (outputs of every iterate "
                        "are not supported yet)", a.span))
                continue
            if t in defined_in and isinstance(ordered[defined_in[t]], list) and \
                    block_of[i] != defined_in[t]:
                full.add(t)
        if e.tensor in {o.name for o in prog.outputs} and block_of.get(i) is not None and \
                isinstance(ordered[block_of[i]], list) and e.kind == "plain":
            full.add(e.tensor)
    if errors:
        raise EinsumcError(errors, prog.source)

    # ---- variables each tensor's value depends on (for hoisting out of query chunks)
    dep_vars: dict[str, set[str]] = {}
    for d in prog.inputs:
        dep_vars[d.name] = set(d.indices)
    stmt_deps = []
    for e in einsums:
        s = set(e.space) | set(e.lhs_vars)
        for a in N.reads(e):
            s |= dep_vars.get(a.tensor, set())
        dep_vars[e.tensor] = dep_vars.get(e.tensor, set()) | s
        stmt_deps.append(s)

    # ---- ranks along which the cascade may run in chunks
    candidates = []
    all_vars = sorted({v for e in einsums for v in e.space} | {v for d in prog.outputs
                                                                 for v in d.indices})
    for c in all_vars:
        if c in iter_vars or any(c in r.vars for e in einsums for r in e.reduced):
            continue
        ok = True
        for e in einsums:
            for a in N.reads(e):
                axes = prog.tensors[a.tensor].axes
                for k, ix in enumerate(a.indices):
                    mentions = c in N.value_vars(ix)
                    if mentions and not (isinstance(ix, N.Var) and ix.name == c):
                        ok = False
                    if axes[k] == c and k != prog.tensors[a.tensor].iter_axis and not (
                            isinstance(ix, N.Var) and ix.name == c):
                        ok = False
            if not ok:
                break
        if ok:
            candidates.append(c)

    stmts = []
    loop_of = {i: b[0] for b in ordered if isinstance(b, list) for i in b[1]}
    for i, e in enumerate(einsums):
        kind = {"plain": "plain", "init": "init", "recur": "next"}[e.kind]
        red = tuple((r.op, tuple(r.vars)) for r in e.reduced)
        reduced_vars = {v for r in e.reduced for v in r.vars}
        stmts.append({
            "tensor": e.tensor,
            "kind": kind,
            "iter_var": e.iter_var,
            "lhs": tuple((ix.var, ix.kind) for ix in e.indices),
            "lhs_axes": tuple(ix.var for ix in e.indices),
            "rhs": encode(e.rhs, prog),
            "filter": None if e.filter is None else encode(e.filter, prog),
            "space": tuple(e.space),
            "reduced": red,
            "out_vars": tuple(v for v in e.space if v not in reduced_vars),
            # the variables of the largest array this statement materializes
            "materialized": _materialized(e),
            "store": "full" if e.tensor in full else "slice",
            "loop_vars": (loop_of[i],) if i in loop_of else (),
            "dep_vars": tuple(sorted(stmt_deps[i])),
            "reads": tuple(sorted({a.tensor for a in N.reads(e)})),
            "span": _span(e.span),
        })
    plan_blocks = []
    for b in ordered:
        if isinstance(b, list):
            iters = tuple(sorted({einsums[i].tensor for i in b[1] if einsums[i].kind == "recur"}))
            skip = _skippable(prog, b[0], b[1], full)
            plan_blocks.append(("loop", b[0], tuple(b[1]), iters, skip))
        else:
            plan_blocks.append(b)

    integer_params = set()
    for e in einsums:
        exprs = [e.filter] if e.filter is not None else []
        exprs += [ix for a in N.reads(e) for ix in a.indices]
        for x in exprs:
            integer_params |= {n.name for n in N.walk(x) if isinstance(n, N.Param)}
    dtypes = {d.dtype for d in prog.inputs + prog.outputs}
    return {
        "source_name": prog.source.name if prog.source else "<spec>",
        "compute_dtype": "f64" if "f64" in dtypes else "f32",
        "ranks": tuple((r.name, None if r.extent is None else encode(r.extent), _span(r.span))
                       for r in prog.ranks),
        "inputs": tuple((d.name, tuple(prog.rank_of_var(v).name for v in d.indices), d.dtype,
                         _span(d.span)) for d in prog.inputs),
        "outputs": tuple((d.name, d.indices, d.dtype) for d in prog.outputs),
        "runtime_params": tuple(p.name for p in prog.params if p.value is None),
        "const_params": tuple((p.name, encode(p.value), _span(p.span)) for p in prog.params
                              if p.value is not None),
        "param_spans": {p.name: _span(p.span) for p in prog.params},
        "integer_params": tuple(sorted(integer_params)),
        "stmts": tuple(stmts),
        "blocks": tuple(plan_blocks),
        "loop_vars": tuple(sorted(iter_vars)),
        "needed_ranks": _needed_ranks(prog),
        "chunk_candidates": tuple(candidates),
    }
