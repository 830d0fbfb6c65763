"""Torch baselines for `einsumc bench --target triton`, derived from the cascade itself.

The benchmark compares the generated kernel with torch SDPA and FlexAttention *for the same
variant*. Rather than flags (`--causal`) or one template per variant, the variant is read
off the spec: the scores `S` that the softmax's max reduction reads are followed back,
through elementwise maps, to the Q·K contraction, and

- the maps become a FlexAttention `score_mod` (ALiBi's `- slope[h] * (p + M - P - m)`,
  soft-capping's `cap * tanh(score / cap)`),
- the `where` filters met on the way become its `mask_mod` (causal with `P != M`, sliding
  window, sinks + window),
- a partitioned key rank (`m1*M0 + m0` of a 1-pass form) is decoded from the key index,
  and grouped query heads (GQA, MQA, SQA) use `enable_gqa`;
- SDPA gets the same variant when the scores are `score + bias` (a dense bias / mask).

A running state that starts from a sink (`RM = s0, RD = 1, RNV = 0`) becomes FlexAttention's
log-sum-exp plus an epilogue. What cannot be expressed is refused with a reason
(`Unavailable`), never approximated: several outputs, or a param or input read anywhere
else outside the scores. The benchmark still checks every derived baseline
against the einsumc kernel before it times anything; `tests/test_triton_baselines.py`
checks the derivation against the NumPy backend for every softmax example on the CPU
(FlexAttention runs eagerly there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ...ir import nodes as N
from ...ir.symbolic import evaluate

#: the most dense-bias bytes SDPA gets (beyond it SDPA is not a fair baseline anyway)
MAX_DENSE_BYTES = 2 << 30
_SCORE = N.Name("__score__")
_FUNCS = {"exp", "log", "sqrt", "abs", "tanh", "sigmoid", "max", "min"}


class Unavailable(Exception):
    """The cascade is not expressible as this baseline; the message says why."""


@dataclass(frozen=True)
class Plan:
    """How the cascade maps onto `flex_attention(q, k, v)` on flattened heads."""
    scale: float
    score: object                 # IR expression over _SCORE, rank variables, inputs
    mask: object | None           # IR predicate, or None
    batch: tuple[tuple[str, int], ...]   # the score space's head variables and extents
    p: str                        # query variable
    keys: tuple[tuple[str, int], ...]    # key variables and the stride of each in the key index
    q_axes: tuple[str, ...]       # Q permuted to (heads..., p, e)
    k_axes: tuple[str, ...]
    v_axes: tuple[str, ...]
    o_axes: tuple[str, ...]       # the output permuted to (heads..., p, f)
    extents: dict
    params: dict
    ranks: tuple[str, str] = ("P", "M")  # the query and key ranks (names)
    state0: tuple[float, float, float] | None = None  # initial (max, denominator, numerator)


def plan(prog, extents: dict, params: dict) -> Plan:
    """Read the variant off the cascade; `Unavailable` if no one-call baseline exists.

    The plan is structural; `verify` runs it against the NumPy backend at a small shape,
    which also catches what the structure does not show (what follows the max)."""
    try:
        return _plan(prog, extents, params)
    except Unavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any shape the reading does not foresee:
        # no baseline, and the reason is printed
        raise Unavailable(f"cannot derive it ({type(exc).__name__}: {exc})") from None


def _plan(prog, extents, params) -> Plan:
    ins = {d.name: d for d in prog.inputs}
    if not {"Q", "K", "V"} <= set(ins):
        raise Unavailable("the baselines need inputs named Q, K and V")
    if len(prog.outputs) != 1:
        raise Unavailable(f"{len(prog.outputs)} outputs: SDPA and FlexAttention return one")
    defs = {e.tensor: e for e in prog.einsums if e.kind == "plain"}
    views = {t: e for t, e in defs.items()
             if isinstance(e.rhs, N.Access) and e.rhs.tensor in ("K", "V") and not e.reduced
             and e.filter is None}

    x = _contraction(prog, views)
    s_name = _scores(prog)
    if s_name not in defs:
        raise Unavailable(f"the max reads `{s_name}`, which is not a plain definition")
    chain: list[str] = []
    score, filters, reads = _inline(N.Access(s_name, _vars(defs[s_name])), defs, x.tensor,
                                    chain, prog)
    if x.filter is not None:
        filters.append((x.tensor, x.filter))
    chain.append(x.tensor)
    init_at, state0 = _initial_state(prog)
    _only_scores_read_extras(prog, set(chain), reads, frozenset(init_at))
    if state0 is not None:
        state0 = tuple(_const(x, extents, params) for x in state0)
        if state0 == (-math.inf, 0.0, 0.0):  # the plain online softmax: no epilogue
            state0 = None
    if any(t != s_name for t, _ in filters) and _has_union(score):
        # `+`, max and min ignore an absent operand (rule 3): a masked score plus a bias is
        # present where the bias is, which no mask_mod expresses
        raise Unavailable("a filtered tensor under `+`, max or min in the scores")

    qa, ka = _operands(x, views)
    scale = 1.0
    for f, recip in N.factors(x.rhs):
        if f in (qa, ka):
            continue
        if N.value_vars(f) or any(isinstance(n, N.Access) for n in N.walk(f)):
            raise Unavailable("the Q·K contraction has a non-constant factor")
        c = float(evaluate(f, extents, params))
        scale = scale / c if recip else scale * c
    qv, kv = N.value_vars(qa), N.value_vars(ka)
    lhs = x.lhs_vars
    # the query variable: of Q's variables that K lacks (p, and the query-head group g of
    # GQA / h of MQA), the last one Q's access names (every example's layout)
    order_q = [n.name for n in N.walk(qa) if isinstance(n, N.Var)]
    p = sorted((v for v in lhs if v in qv and v not in kv), key=order_q.index)[-1:]
    keys = [v for v in lhs if v in kv and v not in qv]
    if len(p) != 1 or not keys:
        raise Unavailable("cannot tell the query and key ranks of the contraction apart")
    summed = [v for v in x.space if v not in lhs]
    if len(summed) != 1:
        raise Unavailable(f"the Q·K contraction sums {len(summed)} variables, not one")
    e_var = summed[0]

    k_decl, v_decl, q_decl = ins["K"].indices, ins["V"].indices, ins["Q"].indices
    k_read = views[ka.tensor].rhs if ka.tensor in views else ka
    if ka.tensor in views and ka.indices != _vars(views[ka.tensor]):
        raise Unavailable(f"`{ka.tensor}` is read at other indices than it is defined")
    mk, ek = _decl_var(k_decl, k_read, keys), _decl_var(k_decl, k_read, [e_var])
    pq, eq = _decl_var(q_decl, qa, p), _decl_var(q_decl, qa, [e_var])
    fv = [v for v in v_decl if v in prog.outputs[0].indices and v not in k_decl]
    if None in (mk, pq, eq, ek) or mk not in v_decl or len(fv) != 1:
        raise Unavailable("cannot tell the ranks of Q, K and V apart")
    fv = fv[0]
    _plain_at(qa, q_decl, (pq, eq), "Q")
    key_strides = _key_strides(keys, k_read, k_decl, mk, lambda v: _ext(prog, v, extents),
                               extents, params)
    _same_key_view(prog, views, ka, k_read, mk)

    # one head order for everything: K's head variables first (in the contraction's
    # order), then the query-only ones (GQA's group), so query head i uses KV head i // G
    heads = [v for v in lhs if v not in p and v not in keys]
    kv_heads = [v for v in heads if v in kv]
    order = kv_heads + [v for v in heads if v not in kv]
    batch = tuple((v, _ext(prog, v, extents)) for v in order)

    def axes_in(decl, access, last, who):
        """`decl` permuted to the head order, then `last`. A head axis is read at a plain
        variable, or at a mixed-radix index of consecutive head variables (SQA's
        `Q[b, h*G + g, ...]`)."""
        groups = []
        for d, ix in zip(decl, access.indices):
            if d in last:
                continue
            vs = [ix.name] if isinstance(ix, N.Var) else _radix_vars(
                ix, lambda v: _ext(prog, v, extents), extents, params, who)
            groups.append((vs, d))
        groups.sort(key=lambda g: order.index(g[0][0]) if g[0][0] in order else len(order))
        flat = [v for vs, _ in groups for v in vs]
        if flat != [v for v in order if v in flat] or any(v not in order for v in flat):
            raise Unavailable(f"{who}'s head axes do not follow the scores' head order")
        return tuple(d for _, d in groups) + last
    q_axes = axes_in(q_decl, qa, (pq, eq), "Q")
    k_axes = axes_in(k_decl, k_read, (mk, ek), "K")
    v_read = _v_read(prog, views)
    v_axes = axes_in(v_decl, v_read, (mk, fv), "V") if v_read is not None else None
    if v_axes is None or k_axes[:-2] != v_axes[:-2]:
        raise Unavailable("K and V are not read with the same head axes")
    out = prog.outputs[0]
    o_def = defs.get(out.name) or next(e for e in prog.einsums if e.tensor == out.name)
    o_axes = axes_in(out.indices, N.Access(out.name, _vars(o_def)), (pq, fv), "the output")
    if len(o_axes) - 2 != len(order):
        raise Unavailable("the output's head axes differ from the scores'")
    return Plan(scale=scale, score=score, mask=_conj([f for _, f in filters]), batch=batch,
                p=p[0], keys=key_strides, q_axes=q_axes, k_axes=k_axes, v_axes=v_axes,
                o_axes=o_axes, extents=dict(extents), params=dict(params),
                ranks=(prog.rank_of_var(pq).name, prog.rank_of_var(mk).name), state0=state0)


def _mixed_radix(ix, vs, var_ext, extents, params):
    """[(var, stride)] major first when `ix` is a mixed-radix index of `vs` (`m1*M0 + m0`:
    no offset, each stride the product of the inner extents), else None."""
    def at(vals):
        return evaluate(N.substitute(ix, {k: N.Num(float(v)) for k, v in vals.items()}),
                        extents, params)
    if not vs or at({v: 0 for v in vs}) != 0:
        return None
    strides = sorted(((v, int(at({u: int(u == v) for u in vs}))) for v in vs),
                     key=lambda kv: -kv[1])
    radix = 1
    for v, st in reversed(strides):
        if st != radix:
            return None
        radix *= var_ext(v)
    if at({v: 1 for v in vs}) != sum(st for _, st in strides):  # not affine
        return None
    return strides


def _radix_vars(ix, var_ext, extents, params, who):
    """The variables of a head axis read at a mixed-radix index, major first."""
    strides = _mixed_radix(ix, sorted(N.value_vars(ix)), var_ext, extents, params)
    if strides is None:
        raise Unavailable(f"{who} is indexed by `{ix}` on a head axis")
    return [v for v, _ in strides]


def _decl_var(decl, access, wanted):
    """The declared variable of the axis where `access` uses any of `wanted`."""
    pos = [i for i, x in enumerate(access.indices) if N.value_vars(x) & set(wanted)]
    return decl[pos[0]] if len(pos) == 1 else None


def _plain_at(access, decl, axes, who):
    for d, ix in zip(decl, access.indices):
        if d in axes and not isinstance(ix, N.Var):
            raise Unavailable(f"{who} is read at `{ix}`, not at a plain variable")


def _v_read(prog, views):
    """The access to V (through its view) of the contraction with the probabilities."""
    for e in prog.einsums:
        for f, _ in N.factors(e.rhs):
            if isinstance(f, N.Access) and (f.tensor == "V" or (
                    f.tensor in views and views[f.tensor].rhs.tensor == "V")):
                if f.tensor == "V":
                    return f
                if f.indices != _vars(views[f.tensor]):
                    raise Unavailable(f"`{f.tensor}` is read at other indices than it is defined")
                return views[f.tensor].rhs
    return None


def _same_key_view(prog, views, ka, k_read, mk):
    """V must be read at the same key index as K."""
    v_read = _v_read(prog, views)
    if v_read is None:
        raise Unavailable("no contraction with V")
    v_decl = next(d for d in prog.inputs if d.name == "V").indices
    k_decl = next(d for d in prog.inputs if d.name == "K").indices
    kx = k_read.indices[k_decl.index(mk)]
    vx = v_read.indices[v_decl.index(mk)]
    if kx != vx:
        raise Unavailable(f"K is read at `{kx}` but V at `{vx}`")


def _has_union(x):
    return any((isinstance(n, N.BinOp) and n.op == "+") or
               (isinstance(n, N.Call) and n.fn in ("max", "min")) for n in N.walk(x))


# ----------------------------------------------------------------------------- reading

def _vars(e):
    return tuple(N.Var(v) for v in e.lhs_vars)


def _contraction(prog, views):
    """The Einsum that contracts Q with K (or a view of K) over one summed variable."""
    for e in prog.einsums:
        if e.kind != "plain" or not e.reduced or e.reduced[0].op != "sum":
            continue
        names = [f.tensor for f, r in N.factors(e.rhs) if isinstance(f, N.Access) and not r]
        if "Q" in names and any(n == "K" or (n in views and views[n].rhs.tensor == "K")
                                for n in names):
            return e
    raise Unavailable("no contraction of Q with K")


def _operands(x, views):
    acc = [f for f, r in N.factors(x.rhs) if isinstance(f, N.Access)]
    qa = next(a for a in acc if a.tensor == "Q")
    ka = next(a for a in acc if a.tensor == "K" or a.tensor in views)
    return qa, ka


def _scores(prog) -> str:
    """The tensor the softmax's max reduction reads."""
    for e in prog.einsums:
        if any(r.op == "max" for r in e.annotations) and isinstance(e.rhs, N.Access):
            return e.rhs.tensor
    raise Unavailable("no max reduction over the scores (not a softmax)")


def _inline(acc, defs, stop, chain, prog):
    """The expression of `acc` down to the contraction `stop` (which becomes the score),
    with the filters met on the way and the extra inputs it reads."""
    filters, reads = [], []

    def go(a):
        if a.tensor == stop:
            if a.indices != _vars(defs[stop]):
                raise Unavailable(f"`{stop}` is read at other indices than it is defined")
            return _SCORE
        if a.tensor in prog.tensors and prog.tensors[a.tensor].kind == "input":
            if a.tensor in ("Q", "K", "V") or not all(isinstance(i, N.Var) for i in a.indices):
                # a shifted read is absent past the edge; torch would wrap or fail
                raise Unavailable(f"the scores read `{a.tensor}` at a computed index")
            reads.append(a.tensor)
            return a
        e = defs.get(a.tensor)
        if e is None or e.reduced or e.annotations:
            raise Unavailable(f"the scores depend on `{a.tensor}`, which is not an elementwise "
                              "map of the Q·K contraction")
        if a.indices != _vars(e):
            raise Unavailable(f"`{a.tensor}` is read at other indices than it is defined")
        chain.append(e.tensor)
        if e.filter is not None:
            filters.append((e.tensor, e.filter))
        return _map(e.rhs)

    def _map(x):
        if isinstance(x, N.Access):
            return go(x)
        if isinstance(x, N.BinOp):
            return N.BinOp(x.op, _map(x.left), _map(x.right))
        if isinstance(x, N.Unary):
            return N.Unary(x.op, _map(x.operand))
        if isinstance(x, N.Call):
            return N.Call(x.fn, tuple(_map(y) for y in x.args))
        return x
    return go(acc), filters, reads


def _only_scores_read_extras(prog, chain, reads, allowed=frozenset()):
    """A param or input (other than Q, K, V) read outside the score chain changes the
    softmax itself: no baseline, except in the statements of `allowed` (the initial
    running state, which `_initial_state` turns into an epilogue)."""
    for i, e in enumerate(prog.einsums):
        if e.tensor in chain or i in allowed:
            continue
        for node in (n for x in (e.rhs, e.filter) if x is not None for n in N.walk(x)):
            if isinstance(node, N.Param):
                raise Unavailable(f"param `{node.name}` is used outside the scores "
                                  f"(in `{e.tensor}`): not expressible as one call")
            if isinstance(node, N.Access) and node.tensor not in ("Q", "K", "V") and \
                    prog.tensors.get(node.tensor) is not None and \
                    prog.tensors[node.tensor].kind == "input":
                raise Unavailable(f"input `{node.tensor}` is read outside the scores")


def _const(x, extents, params) -> float:
    """A constant expression's value, infinities included."""
    if isinstance(x, N.Num):
        return float(x.value)
    if isinstance(x, N.Unary) and x.op == "-":
        return -_const(x.operand, extents, params)
    if isinstance(x, N.Param) and x.name in params:
        return float(params[x.name])
    return float(evaluate(x, extents, params))


def _initial_state(prog):
    """(statement indices, (max, denominator, numerator) initial expressions) of an online
    softmax whose output is `N[final] / D[final]` and whose running max `R[v+1] =
    max(R[v], ...)`, when those three start from constants or params; else ((), None).
    Starting from (s0, 1, 0) is one extra key of logit s0 and value 0 (a learnable sink):
    FlexAttention plus an epilogue on its log-sum-exp computes it."""
    out = prog.outputs[0].name
    fin = [e for e in prog.einsums if e.tensor == out]
    if len(fin) != 1 or not (isinstance(fin[0].rhs, N.BinOp) and fin[0].rhs.op == "/"):
        return (), None
    num, den = fin[0].rhs.left, fin[0].rhs.right
    if not (isinstance(num, N.Access) and isinstance(den, N.Access)):
        return (), None
    mx = [e.tensor for e in prog.einsums if e.kind == "recur" and isinstance(e.rhs, N.Call)
          and e.rhs.fn == "max" and any(isinstance(a, N.Access) and a.tensor == e.tensor
                                        for a in e.rhs.args)]
    if len(mx) != 1:
        return (), None
    inits = {e.tensor: (i, e.rhs) for i, e in enumerate(prog.einsums) if e.kind == "init"}
    state = []
    for t in (mx[0], den.tensor, num.tensor):
        if t not in inits or any(isinstance(n, (N.Access, N.Var)) for n in N.walk(inits[t][1])):
            return (), None
        state.append(inits[t][1])
    return tuple(inits[t][0] for t in (mx[0], den.tensor, num.tensor)), tuple(state)


def _ext(prog, var, extents):
    return int(extents[prog.rank_of_var(var).name])


def _key_strides(keys, k_read, k_decl, mk, var_ext, extents, params):
    """Each key variable's stride in the key index: `K[..., m]` -> ((m, 1),); a view
    `K[..., m1*M0 + m0]` -> ((m1, M0), (m0, 1)). Anything else (an offset, a reversal, a
    stride that is not the inner extent) is refused."""
    kx = k_read.indices[k_decl.index(mk)]
    if len(keys) == 1:
        if kx != N.Var(keys[0]):
            raise Unavailable(f"K is read at `{kx}`, not at the key variable")
        return ((keys[0], 1),)

    strides = _mixed_radix(kx, list(keys), var_ext, extents, params)
    if strides is None:
        raise Unavailable(f"the key index `{kx}` is not a partition of the key rank "
                          "(an offset, a reversal or another order)")
    return tuple(strides)


def _conj(preds):
    out = None
    for p in preds:
        out = p if out is None else N.BinOp("and", out, p)
    return out


# ----------------------------------------------------------------------------- evaluating

def _evaluator(pl: Plan, inputs: dict, torch):
    """`ev(expr, score, head, q_idx, kv_idx)`: an IR expression on torch values, with the
    head variables decoded from the flattened head index and the key variables from the key
    index."""
    strides, s = {}, 1
    for v, n in reversed(pl.batch):
        strides[v] = (s, n)
        s *= n

    def ev(x, env):
        if x == _SCORE:
            return env["score"]
        if isinstance(x, N.Num):
            return x.value
        if isinstance(x, N.Extent):
            return pl.extents[x.name]
        if isinstance(x, N.Param):
            if x.name not in pl.params:
                raise Unavailable(f"param `{x.name}` has no value")
            return pl.params[x.name]
        if isinstance(x, N.Var):
            return env["vars"][x.name]
        if isinstance(x, N.Access):
            idx = tuple(_as_index(ev(i, env), torch) for i in x.indices)
            return inputs[x.tensor][idx].float()
        if isinstance(x, N.Unary):
            a = ev(x.operand, env)
            return (~a if torch.is_tensor(a) else not a) if x.op == "not" else -a
        if isinstance(x, N.BinOp):
            a, b = ev(x.left, env), ev(x.right, env)
            return _binop(x.op, a, b, torch)
        if isinstance(x, N.Call):
            args = [ev(y, env) for y in x.args]
            return _call(x.fn, args, torch)
        raise Unavailable(f"cannot evaluate {type(x).__name__}")

    def run(x, score, head, q_idx, kv_idx):
        vars_ = {pl.p: q_idx}
        for v, (st, n) in strides.items():
            vars_[v] = (head // st) % n
        rest = kv_idx  # outermost key variable first: m1 = kv // M0, m0 = kv % M0
        for v, st in pl.keys:
            vars_[v] = rest // st if st != 1 else rest
            rest = rest % st if st != 1 else rest
        return ev(x, {"score": score, "vars": vars_})
    return run


def _as_index(v, torch):
    return v.long() if torch.is_tensor(v) else int(v)


def _binop(op, a, b, torch):
    if op in ("and", "or"):
        if torch.is_tensor(a) or torch.is_tensor(b):
            return (a & b) if op == "and" else (a | b)
        return (a and b) if op == "and" else (a or b)
    ops = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
           "//": lambda: a // b, "%": lambda: a % b, "<": lambda: a < b, "<=": lambda: a <= b,
           "==": lambda: a == b, "!=": lambda: a != b, ">": lambda: a > b, ">=": lambda: a >= b}
    if op not in ops:
        raise Unavailable(f"operator `{op}` in the scores")
    return ops[op]()


def _call(fn, args, torch):
    if fn not in _FUNCS:
        raise Unavailable(f"function `{fn}` in the scores")
    t = [a if torch.is_tensor(a) else torch.tensor(float(a)) for a in args]
    if fn in ("max", "min"):
        return (torch.maximum if fn == "max" else torch.minimum)(t[0], t[1])
    return getattr(torch, fn)(t[0])


# ----------------------------------------------------------------------------- baselines

def flatten(t, axes, order, torch):
    """A tensor with named axes as (1, heads, rows, cols) in `order`."""
    t = t.permute([axes.index(a) for a in order])
    return t.reshape((1, -1) + tuple(t.shape[-2:]))


def flex_baseline(pl: Plan, inputs: dict, torch, compile_: bool = True):
    """`run(q, k, v)` with FlexAttention for the plan (q, k, v flattened by `flatten`)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    ev = _evaluator(pl, inputs, torch)
    plain = pl.score == _SCORE

    def score_mod(score, b, h, q_idx, kv_idx):
        return ev(pl.score, score, h, q_idx, kv_idx)

    def mask_mod(b, h, q_idx, kv_idx):
        return ev(pl.mask, None, h, q_idx, kv_idx)
    fa = torch.compile(flex_attention) if compile_ else flex_attention
    cache = {}

    def run(q, k, v):
        key = (q.shape, k.shape, q.device)
        if pl.mask is not None and key not in cache:
            per_head = any(_mentions(pl.mask, v) for v, _ in pl.batch)
            cache[key] = create_block_mask(mask_mod, None, q.shape[1] if per_head else None,
                                           q.shape[2], k.shape[2], device=q.device)
        kw = {"score_mod": None if plain else score_mod, "block_mask": cache.get(key),
              "scale": pl.scale, "enable_gqa": q.shape[1] != k.shape[1]}
        if pl.state0 is None:
            return fa(q, k, v, **kw)
        o, lse = fa(q, k, v, return_lse=True, **kw)
        return _merge_state(o, lse.float(), pl.state0, torch)
    return run


def _merge_state(o, lse, state0, torch):
    """softmax(scores)·V merged with an initial running state (m0, d0, n0): the keys give
    numerator o·e^lse and denominator e^lse; the state n0·e^m0 and d0·e^m0."""
    m0, d0, n0 = state0
    top = torch.maximum(lse, torch.full_like(lse, m0))
    top = torch.where(torch.isinf(top), torch.zeros_like(top), top)
    wk = torch.exp(lse - top).unsqueeze(-1)
    ws = torch.exp(m0 - top).unsqueeze(-1)
    den = wk + d0 * ws
    res = (o.float() * wk + n0 * ws) / torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.zeros_like(res), res).to(o.dtype)


def sdpa_baseline(pl: Plan, inputs: dict, torch, heads: int, P: int, M: int, device):
    """`run(q, k, v)` with SDPA, when the scores are `score + bias` (masked: -inf)."""
    if pl.state0 is not None:
        raise Unavailable("the running state starts from a sink; SDPA returns no "
                          "log-sum-exp to merge it with")
    bias_expr = _bias(pl.score)
    ev = _evaluator(pl, inputs, torch)
    dense = bias_expr is not None and bias_expr != N.Num(0.0)
    if bias_expr is None:
        raise Unavailable("the scores are not `score + bias`: SDPA cannot apply the map")
    per_head = any(_mentions(x, v) for v, _ in pl.batch for x in (bias_expr, pl.mask)
                   if x is not None)
    h = torch.arange(heads if per_head else 1, device=device).view(-1, 1, 1)
    qi = torch.arange(P, device=device).view(1, -1, 1)
    ki = torch.arange(M, device=device).view(1, 1, -1)
    nbytes = (heads if per_head else 1) * P * M * (4 if dense else 1)
    if nbytes > MAX_DENSE_BYTES:
        raise Unavailable(f"a dense {nbytes / 2**30:.1f} GiB mask/bias would be needed")
    mask = None
    if dense:
        mask = ev(bias_expr, None, h, qi, ki)
        mask = torch.broadcast_to(torch.as_tensor(mask, device=device).float(),
                                  (h.shape[0], P, M))
        if pl.mask is not None:
            keep = torch.broadcast_to(ev(pl.mask, None, h, qi, ki), mask.shape)
            mask = mask.masked_fill(~keep, float("-inf"))
        mask = mask.unsqueeze(0)
    elif pl.mask is not None:
        mask = torch.broadcast_to(ev(pl.mask, None, h, qi, ki), (h.shape[0], P, M)).unsqueeze(0)

    def run(q, k, v):
        m = mask.to(q.dtype) if mask is not None and mask.dtype != torch.bool else mask
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=m, scale=pl.scale, enable_gqa=q.shape[1] != k.shape[1])
    return run


def mask_density(pl: Plan, inputs: dict, torch, heads: int, P: int, M: int, device) -> float:
    """The fraction of (head, query, key) points the mask keeps: every head when the mask
    depends on one, in row blocks so that 16K x 16K never materializes at once."""
    run = _evaluator(pl, inputs, torch)
    per_head = any(_mentions(pl.mask, v) for v, _ in pl.batch)
    ki = torch.arange(M, device=device).view(1, -1)
    kept = 0.0
    for h in range(heads if per_head else 1):
        hh = torch.full((1, 1), h, dtype=torch.long, device=device)
        for r0 in range(0, P, 2048):
            qi = torch.arange(r0, min(P, r0 + 2048), device=device).view(-1, 1)
            m = torch.as_tensor(run(pl.mask, None, hh, qi, ki), device=device)
            kept += float(torch.broadcast_to(m, (qi.shape[0], M)).sum().item())
    return kept / ((heads if per_head else 1) * P * M)


def verify(prog, given: dict, params: dict, torch) -> dict:
    """Check the derived baselines against the NumPy backend at a small shape on the CPU
    (FlexAttention eagerly): {"torch SDPA": None | reason, "FlexAttention": None | reason}.

    The plan is structural; this is what shows that the cascade after the max is the
    softmax the baselines compute (a normalization, V, no extra filter)."""
    import numpy as np

    from ...inputs import random_inputs, resolve_extents
    full = resolve_extents(prog, given)
    pl = plan(prog, full, {**params, **_derived_params(prog, full, params)})
    p_rank, m_rank = pl.ranks
    P, M = full[p_rank], full[m_rank]
    small = dict(given)
    small[p_rank] = min(P, 40)
    # keep the sign of M - P (a bottom-right causal mask depends on it), at most 25 apart
    d = 0 if M == P else (max(1, min(M - P, 25)) if M > P else min(-1, max(M - P, -25)))
    small[m_rank] = max(1, small[p_rank] + d)
    try:
        ext = resolve_extents(prog, small)
        sp = plan(prog, ext, {**params, **_derived_params(prog, ext, params)})
        ins = random_inputs(prog, small, seed=7)
        run = {k: v for k, v in params.items() if k in prog.runtime_params}
        ref = np.asarray(next(iter(prog.compile("numpy")(**ins, **run).values())), np.float32)
    except Exception as exc:  # noqa: BLE001 - no small shape: say so, time einsumc alone
        reason = f"not verified at a small shape ({type(exc).__name__}: {exc})"
        return {"torch SDPA": reason, "FlexAttention": reason}
    t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in ins.items()}
    decl = {d.name: d.indices for d in prog.inputs}
    q = flatten(t["Q"], decl["Q"], sp.q_axes, torch)
    k = flatten(t["K"], decl["K"], sp.k_axes, torch)
    v = flatten(t["V"], decl["V"], sp.v_axes, torch)
    o = flatten(torch.from_numpy(ref), prog.outputs[0].indices, sp.o_axes, torch)
    makers = {"torch SDPA": lambda: sdpa_baseline(sp, t, torch, q.shape[1], q.shape[2],
                                                  k.shape[2], "cpu"),
              "FlexAttention": lambda: flex_baseline(sp, t, torch, compile_=False)}
    out = {}
    for name, make in makers.items():
        try:
            got = make()(q, k, v)
            err = (torch.nan_to_num(got.float()) - o).abs().max().item()
            out[name] = None if err <= 1e-4 else (
                f"it does not compute this cascade (max abs error {err:.3g} against the NumPy "
                f"backend at {p_rank}={small[p_rank]}, {m_rank}={small[m_rank]})")
        except Unavailable as exc:
            out[name] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a baseline that fails is not timed
            out[name] = f"failed at a small shape ({type(exc).__name__}: {exc})"
    return out


def _derived_params(prog, ext, params):
    out = {}
    for pd in prog.params:
        if pd.value is not None:
            out[pd.name] = float(evaluate(pd.value, ext, {**params, **out}))
    return out


def _bias(x):
    """`b` where x is `score + b` (or `score`, b = 0); None otherwise."""
    if x == _SCORE:
        return N.Num(0.0)
    if isinstance(x, N.BinOp) and x.op in ("+", "-"):
        left_has, right_has = _has_score(x.left), _has_score(x.right)
        if left_has and not right_has:
            b = _bias(x.left)
            return None if b is None else N.BinOp(x.op, b, x.right)
        if right_has and not left_has and x.op == "+":
            b = _bias(x.right)
            return None if b is None else N.BinOp("+", x.left, b)
    return None


def _has_score(x):
    return any(n == _SCORE for n in N.walk(x))


def _mentions(x, var):
    return x is not None and var in N.value_vars(x)
