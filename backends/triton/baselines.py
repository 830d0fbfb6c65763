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

What cannot be expressed as one call is refused with a reason (`Unavailable`), never
approximated: several outputs, or a param or input read outside the scores (a learnable
sink logit that seeds the running max). The benchmark still checks every derived baseline
against the einsumc kernel before it times anything; `tests/test_triton_baselines.py`
checks the derivation against the NumPy backend for every softmax example on the CPU
(FlexAttention runs eagerly there).
"""
from __future__ import annotations

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


def plan(prog, extents: dict, params: dict) -> Plan:
    """Read the variant off the cascade; `Unavailable` if no one-call baseline exists."""
    ins = {d.name: d for d in prog.inputs}
    if not {"Q", "K", "V"} <= set(ins):
        raise Unavailable("the baselines need inputs named Q, K and V")
    if len(prog.outputs) != 1:
        raise Unavailable(f"{len(prog.outputs)} outputs: SDPA and FlexAttention return one")
    defs = {e.tensor: e for e in prog.einsums if e.kind == "plain"}
    views = {t: e for t, e in defs.items()
             if isinstance(e.rhs, N.Access) and e.rhs.tensor in ("K", "V") and not e.reduced}

    x = _contraction(prog, views)
    s_name = _scores(prog)
    chain: list[str] = []
    score, filters, reads = _inline(N.Access(s_name, _vars(defs[s_name])), defs, x.tensor,
                                    chain, prog)
    if x.filter is not None:
        filters.append(x.filter)
    chain.append(x.tensor)
    _only_scores_read_extras(prog, set(chain), reads)

    qa, ka = _operands(x, views)
    scale = 1.0
    for f, recip in N.factors(x.rhs):
        if f in (qa, ka):
            continue
        try:
            c = float(evaluate(f, extents, params))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise Unavailable("the Q·K contraction has a non-constant factor") from None
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
    batch = tuple((v, _ext(prog, v, extents)) for v in lhs if v not in p and v not in keys)
    (e_var,) = [v for v in x.space if v not in lhs] or [None]
    if e_var is None:
        raise Unavailable("the scores contract no head dimension")

    k_decl, v_decl, q_decl = ins["K"].indices, ins["V"].indices, ins["Q"].indices
    k_read = views[ka.tensor].rhs if ka.tensor in views else ka

    def decl_var(decl, access, wanted):
        """The declared variable of the axis where `access` uses any of `wanted`."""
        pos = [i for i, x in enumerate(access.indices) if N.value_vars(x) & set(wanted)]
        return decl[pos[0]] if len(pos) == 1 else None
    if ka.tensor in views and ka.indices != _vars(views[ka.tensor]):
        raise Unavailable(f"`{ka.tensor}` is read at other indices than it is defined")
    mk, ek = decl_var(k_decl, k_read, keys), decl_var(k_decl, k_read, [e_var])
    pq, eq = decl_var(q_decl, qa, p), decl_var(q_decl, qa, [e_var])
    fv = [v for v in v_decl if v in prog.outputs[0].indices and v not in k_decl]
    if None in (mk, pq, eq, ek) or mk not in v_decl or len(fv) != 1:
        raise Unavailable("cannot tell the ranks of Q, K and V apart")
    fv = fv[0]
    key_strides = _key_strides(keys, ka, views, extents, params)

    def order(axes, last):
        return tuple(v for v in axes if v not in last) + last
    return Plan(scale=scale, score=score, mask=_conj(filters), batch=batch, p=p[0],
                keys=key_strides, q_axes=order(q_decl, (pq, eq)),
                k_axes=order(k_decl, (mk, ek)), v_axes=order(v_decl, (mk, fv)),
                o_axes=order(prog.outputs[0].indices, (pq, fv)),
                extents=dict(extents), params=dict(params))


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
            filters.append(e.filter)
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


def _only_scores_read_extras(prog, chain, reads):
    """A param or input (other than Q, K, V) read outside the score chain changes the
    softmax itself (a learnable sink seeds the running max): no one-call baseline."""
    for e in prog.einsums:
        if e.tensor in chain:
            continue
        for node in (n for x in (e.rhs, e.filter) if x is not None for n in N.walk(x)):
            if isinstance(node, N.Param):
                raise Unavailable(f"param `{node.name}` is used outside the scores "
                                  f"(in `{e.tensor}`): not expressible as one call")
            if isinstance(node, N.Access) and node.tensor not in ("Q", "K", "V") and \
                    prog.tensors.get(node.tensor) is not None and \
                    prog.tensors[node.tensor].kind == "input":
                raise Unavailable(f"input `{node.tensor}` is read outside the scores")


def _ext(prog, var, extents):
    return int(extents[prog.rank_of_var(var).name])


def _key_strides(keys, ka, views, extents, params):
    """Each key variable's stride in the key index: (m,) -> 1; (m1, m0) of a view
    `K[..., m1*M0 + m0]` -> (M0, 1)."""
    if len(keys) == 1:
        return ((keys[0], 1),)
    if ka.tensor not in views:
        raise Unavailable("several key variables without a view of K")
    view = views[ka.tensor]
    idx = [i for i in view.rhs.indices if set(N.value_vars(i)) & set(keys)]
    if len(idx) != 1:
        raise Unavailable("the key index of the view of K is not one expression")

    def at(vals):
        return evaluate(N.substitute(idx[0], {k: N.Num(float(v)) for k, v in vals.items()}),
                        extents, params)
    base = at({k: 0 for k in keys})
    strides = tuple((k, int(at({j: int(j == k) for j in keys}) - base)) for k in keys)
    return tuple(sorted(strides, key=lambda kv: -kv[1]))


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
            per_head = any(v for v, _ in pl.batch if _mentions(pl.mask, v))
            cache[key] = create_block_mask(mask_mod, None, q.shape[1] if per_head else None,
                                           q.shape[2], k.shape[2], device=q.device)
        return fa(q, k, v, score_mod=None if plain else score_mod,
                  block_mask=cache.get(key), scale=pl.scale,
                  enable_gqa=q.shape[1] != k.shape[1])
    return run


def sdpa_baseline(pl: Plan, inputs: dict, torch, heads: int, P: int, M: int, device):
    """`run(q, k, v)` with SDPA, when the scores are `score + bias` (masked: -inf)."""
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


def mask_grid(pl: Plan, inputs: dict, torch, P: int, M: int, device):
    """The mask of the first head on the (P, M) grid (for the present-point fraction)."""
    h = torch.zeros((1, 1), dtype=torch.long, device=device)
    qi = torch.arange(P, device=device).view(-1, 1)
    ki = torch.arange(M, device=device).view(1, -1)
    return torch.broadcast_to(torch.as_tensor(_evaluator(pl, inputs, torch)(
        pl.mask, None, h, qi, ki), device=device), (P, M))


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


def flops(pl: Plan, shapes_q, shapes_k) -> float:
    """4·heads·P·M·E (QK and AV), before masking."""
    _, hq, P, E = shapes_q
    M = shapes_k[2]
    return 4.0 * hq * P * M * E


