"""Timeloop v0.4 problem files, one per computing Einsum, for cross-checking with Timeloop.

Each Einsum becomes a `problem:` with its iteration space as `dimensions` (upper-case rank
names), one data space per tensor it reads or writes (the written one `read_write: true`)
and the extents as the `instance`. Affine indices become projections with coefficients
(`m1*M0 + m0` -> `[[M1, M0_coef], [M0]]`). What Timeloop cannot say is written as a comment:
a recurrence's `m1+1` offset (the previous iterate is a separate data space `RM_prev`, as
in the FuseMax artifact's `RM0`), a final iterate (`RNV[f, M1, p]`: that axis is fixed), and
B x H instances (added as dimensions `B`, `H` of every data space).
"""
from __future__ import annotations

from ...ir import nodes as N
from ...ir.program import Program
from .cascade import CascadeModel


def _linear(x: N.Expr, ext_name: dict[str, int]) -> tuple[dict[str, int], int] | None:
    """An index as {var: coefficient} + offset, or None when it is not affine."""
    if isinstance(x, N.Var):
        return {x.name: 1}, 0
    if isinstance(x, N.Num):
        return ({}, int(x.value)) if float(x.value).is_integer() else None
    if isinstance(x, N.Extent):
        return ({}, ext_name[x.name]) if x.name in ext_name else None
    if isinstance(x, N.Unary) and x.op == "-":
        r = _linear(x.operand, ext_name)
        return None if r is None else ({k: -v for k, v in r[0].items()}, -r[1])
    if isinstance(x, N.BinOp) and x.op in "+-":
        a, b = _linear(x.left, ext_name), _linear(x.right, ext_name)
        if a is None or b is None:
            return None
        s = 1 if x.op == "+" else -1
        out = dict(a[0])
        for k, v in b[0].items():
            out[k] = out.get(k, 0) + s * v
        return out, a[1] + s * b[1]
    if isinstance(x, N.BinOp) and x.op == "*":
        a, b = _linear(x.left, ext_name), _linear(x.right, ext_name)
        if a is None or b is None:
            return None
        if not a[0]:
            return {k: v * a[1] for k, v in b[0].items()}, a[1] * b[1]
        if not b[0]:
            return {k: v * b[1] for k, v in a[0].items()}, a[1] * b[1]
    return None


def timeloop_problems(prog: Program, cm: CascadeModel, shapes: dict[str, int],
                      instances: dict[str, int] | None = None) -> dict[str, str]:
    """{file name: YAML text} for every Einsum that computes something."""
    import yaml

    instances = instances or {}
    ext_name = dict(shapes)
    rank = {r.var: r.name for r in prog.ranks}
    out: dict[str, str] = {}
    for e, info in zip(prog.einsums, cm.einsums):
        if not info.ops or info.view_of or e.kind == "init":
            continue
        notes: list[str] = []
        dims = [rank[v] for v in e.space]
        for v in e.lhs_vars:
            if rank[v] not in dims:
                dims.append(rank[v])
        extra = [k for k in ("B", "H") if k in instances]
        coefs: dict[str, int] = {}
        spaces = []

        def projection(name: str, indices, iter_axis) -> list:
            proj = [[[d]] for d in extra]
            for k, ix in enumerate(indices):
                lin = _linear(ix, ext_name)
                if lin is None:
                    notes.append(f"{name}: index {k} is not affine; left out")
                    continue
                terms, off = lin
                if not terms:
                    notes.append(f"{name}: axis {k} is fixed at {off} (a final or initial "
                                 "iterate)")
                    continue
                if off:
                    notes.append(f"{name}: offset {off:+d} on axis {k} dropped (Timeloop "
                                 "projections have no offsets)")
                expr = []
                for v, c in terms.items():
                    if c == 1:
                        expr.append([rank[v]])
                    else:
                        cname = f"{rank[v]}_coef{c}"
                        coefs[cname] = c
                        expr.append([rank[v], cname])
                proj.append(expr)
            return proj

        seen = set()
        for x in (e.rhs, e.filter):
            if x is None:
                continue
            for a in N.walk(x):
                if not isinstance(a, N.Access):
                    continue
                t = prog.tensors[a.tensor]
                name = a.tensor
                if t.iter_axis is not None:
                    ix = a.indices[t.iter_axis]
                    if isinstance(ix, N.Var):
                        name = f"{a.tensor}_prev"
                    elif isinstance(ix, N.Extent):
                        name = f"{a.tensor}_final"
                if name in seen or name == e.tensor:
                    continue
                seen.add(name)
                spaces.append({"name": name, "projection": projection(name, a.indices,
                                                                      t.iter_axis)})
        out_idx = []
        for ix in e.indices:
            if ix.kind == "next":
                out_idx.append(N.BinOp("+", N.Var(ix.var), N.Num(1.0)))
            else:
                out_idx.append(N.Var(ix.var))
        spaces.append({"name": e.tensor, "projection": projection(e.tensor, out_idx, None),
                       "read_write": True})
        shape = {"name": e.tensor, "dimensions": extra + dims, "data_spaces": spaces}
        if coefs:
            shape["coefficients"] = [{"name": k, "default": v} for k, v in sorted(coefs.items())]
        inst = {k: int(instances[k]) for k in extra}
        inst.update({d: int(ext_name[d]) for d in dims})
        doc = {"problem": {"version": 0.4, "shape": shape, "instance": inst}}
        head = [f"# Timeloop v0.4 problem for Einsum {info.index} (line {info.line}) of "
                f"{cm.name}", f"#   {info.text}"]
        head += [f"#   note: {n}" for n in dict.fromkeys(notes)]
        out[f"{info.index:02d}_{e.tensor.lower()}.yaml"] = "\n".join(head) + "\n" + yaml.safe_dump(
            doc, sort_keys=False, default_flow_style=None)
    return out
