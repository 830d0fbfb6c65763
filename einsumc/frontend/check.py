"""The checker: AST (`Module`) -> checked `Program`, or every error found at once.

It resolves names (tensor, param, extent, rank variable), checks declarations, arity,
extents, definition order, recurrences, filters and reduce annotations, computes each
Einsum's iteration space and reductions, and emits the likely-mistake warnings that the
language contract asks for. Errors are collected, then raised together.
"""
from __future__ import annotations

from dataclasses import replace

import sympy

from ..diagnostics import Diagnostic, EinsumcError, Source, Span, error, note, warning
from ..ir import nodes as N
from ..ir.program import DTYPES, Program, TensorInfo
from ..ir.symbolic import NotConstant, provably_different, to_sympy

NONLINEAR = {"exp", "log", "sqrt", "tanh", "sigmoid", "abs", "max", "min"}


class _Checker:
    def __init__(self, module: N.Module, source: Source):
        self.m = module
        self.src = source
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.ranks: dict[str, N.RankDecl] = {}
        self.var_rank: dict[str, str] = {}  # rank variable -> rank name
        self.params: dict[str, N.ParamDecl] = {}
        self.decls: dict[str, N.TensorDecl] = {}
        self.tensors: dict[str, dict] = {}  # name -> {axes, kind, dtype, iter_axis, ...}
        self.defined_at: dict[str, Span | None] = {}
        self.filtered: set[str] = set()  # tensors defined by an Einsum with a `where`
        # tensors whose defining statement was rejected (its error is reported); later reads
        # of them are not reported again as "used before its definition" and the like
        self.failed: set[str] = set()

    def err(self, msg: str, span: Span | None, *notes: Diagnostic) -> None:
        self.errors.append(error(msg, span, *notes))

    def warn(self, msg: str, span: Span | None, *notes: Diagnostic) -> None:
        self.warnings.append(warning(msg, span, *notes))

    # ------------------------------------------------------------------ declarations
    def declare(self) -> None:
        stmts = self.m.statements
        for s in stmts:
            if isinstance(s, N.RankDecl):
                self.declare_rank(s)
        for s in stmts:
            if isinstance(s, N.ParamDecl):
                self.declare_param(s)
        for s in stmts:
            if isinstance(s, N.TensorDecl):
                self.declare_tensor(s)
        self.resolved_ranks = {n: self.resolve_rank_extent(r) for n, r in self.ranks.items()}
        self.check_extent_cycles()
        self.resolved_params = {n: self.resolve_param(p) for n, p in self.params.items()}

    def declare_rank(self, r: N.RankDecl) -> None:
        if not r.name[0].isupper():
            self.err(f"rank name '{r.name}' must start with an upper-case letter "
                     f"(its variable is '{r.name.lower()}')", r.span)
            return
        if r.name in self.ranks:
            self.err(f"rank '{r.name}' is declared twice", r.span,
                     note("first declared here", self.ranks[r.name].span))
            return
        if r.var in self.var_rank:
            self.err(f"ranks '{self.var_rank[r.var]}' and '{r.name}' share the variable "
                     f"'{r.var}'", r.span)
            return
        self.ranks[r.name] = r
        self.var_rank[r.var] = r.name

    def declare_param(self, p: N.ParamDecl) -> None:
        if p.name in self.params:
            self.err(f"param '{p.name}' is declared twice", p.span,
                     note("first declared here", self.params[p.name].span))
            return
        if p.name in self.ranks or p.name in self.var_rank:
            self.err(f"param '{p.name}' has the name of a rank or rank variable", p.span)
            return
        self.params[p.name] = p

    def declare_tensor(self, t: N.TensorDecl) -> None:
        if t.name in self.decls:
            self.err(f"tensor '{t.name}' is declared twice", t.span,
                     note("first declared here", self.decls[t.name].span))
            return
        if t.name in self.params or t.name in self.ranks or t.name in self.var_rank:
            self.err(f"tensor '{t.name}' has the name of a param, rank or rank variable", t.span)
            return
        dtype = t.dtype or "f32"
        ok = True
        if dtype not in DTYPES:
            self.err(f"unknown dtype '{t.dtype}'; expected one of {', '.join(DTYPES)}", t.span)
            ok = False
        seen: set[str] = set()
        for i, v in enumerate(t.indices):
            sp = t.index_spans[i] if i < len(t.index_spans) else t.span
            if v not in self.var_rank:
                self.err(self.unknown_var_message(v), sp)
                ok = False
            if v in seen:
                self.err(f"index variable '{v}' appears twice in the declaration of '{t.name}'", sp)
                ok = False
            seen.add(v)
        self.decls[t.name] = replace(t, dtype=dtype)
        self.tensors[t.name] = {"axes": t.indices, "kind": t.kind, "dtype": dtype,
                                "iter_axis": None, "defined_by": []}
        del ok
        if t.kind == "input":
            self.defined_at[t.name] = t.span

    def unknown_var_message(self, v: str) -> str:
        if v[:1].islower():
            return f"index variable '{v}' belongs to no declared rank (declare `rank {v.upper()}`)"
        return f"'{v}' is not a rank variable (rank variables are lower-case)"

    def resolve_rank_extent(self, r: N.RankDecl) -> N.RankDecl:
        if r.extent is None:
            return r
        e = self.resolve_const(r.extent, allow_params=False, what="an extent")
        return replace(r, extent=e)

    def check_extent_cycles(self) -> None:
        deps = {n: {x.name for x in N.walk(r.extent) if isinstance(x, N.Extent)}
                for n, r in self.resolved_ranks.items() if r.extent is not None}
        state: dict[str, int] = {}

        def visit(n: str, path: list[str]) -> bool:
            if state.get(n) == 1:
                cyc = path[path.index(n):] + [n]
                self.err("extents depend on each other in a cycle: " + " -> ".join(cyc),
                         self.ranks[n].span)
                return True
            if state.get(n) == 2:
                return False
            state[n] = 1
            for d in sorted(deps.get(n, ())):
                if visit(d, path + [n]):
                    state[n] = 2
                    return True
            state[n] = 2
            return False

        for n in sorted(deps):
            visit(n, [])
        self.extent_cycle = any(e.message.startswith("extents depend") for e in self.errors)
        if not self.extent_cycle:
            for n, r in self.resolved_ranks.items():
                if r.extent is None:
                    continue
                try:
                    v = self.sym_extent(n)
                except ZeroDivisionError:
                    self.err(f"extent of '{n}' divides by zero", r.span)
                    continue
                except (NotConstant, TypeError, ValueError):
                    continue
                if v.has(sympy.zoo, sympy.nan):
                    self.err(f"extent of '{n}' divides by zero", r.span)
                elif v.has(sympy.oo):
                    self.err(f"extent of '{n}' is infinite", r.span)
                elif v.is_number:
                    if not v.is_integer:
                        shown = float(v) if v.is_Float else v
                        self.err(f"extent of '{n}' is {shown}, not an integer", r.span)
                    elif v < 0:
                        self.err(f"extent of '{n}' is negative ({v})", r.span)

    def sym_extent(self, rank: str) -> sympy.Expr:
        """A rank's extent with derived extents substituted (symbols for free ones)."""
        r = self.resolved_ranks[rank]
        if r.extent is None:
            return sympy.Symbol(rank, integer=True, positive=True)
        expr = to_sympy(r.extent)
        for _ in range(len(self.resolved_ranks) + 1):
            subs = {s: self.sym_direct(s.name) for s in expr.free_symbols
                    if s.name in self.resolved_ranks and self.resolved_ranks[s.name].extent is not None}
            if not subs:
                break
            expr = expr.subs(subs)
        return expr

    def sym_direct(self, rank: str) -> sympy.Expr:
        return to_sympy(self.resolved_ranks[rank].extent)

    def resolve_param(self, p: N.ParamDecl) -> N.ParamDecl:
        if p.value is None:
            return p
        return replace(p, value=self.resolve_const(p.value, allow_params=True, what="a param value",
                                                   before=p))

    def resolve_const(self, e: N.Expr, allow_params: bool, what: str,
                      before: N.ParamDecl | None = None) -> N.Expr:
        """Resolve names in a constant expression (extents, and params where allowed)."""
        def go(x: N.Expr) -> N.Expr:
            if isinstance(x, N.Name):
                if x.name in self.ranks:
                    return N.Extent(x.name, x.span)
                if allow_params and x.name in self.params:
                    if before is not None and (x.name == before.name or
                                               _offset(self.params[x.name]) > _offset(before)):
                        self.err(f"param '{x.name}' is used before its declaration", x.span)
                    return N.Param(x.name, x.span)
                if x.name in self.var_rank:
                    self.err(f"rank variable '{x.name}' cannot appear in {what}", x.span)
                else:
                    self.err(f"undeclared name '{x.name}' in {what}", x.span)
                return x
            if isinstance(x, N.Access):
                self.err(f"a tensor cannot appear in {what}", x.span)
                return x
            if isinstance(x, N.BinOp) and x.op not in N.ARITH_OPS:
                self.err(f"'{x.op}' cannot appear in {what}", x.span)
                return x
            if isinstance(x, N.Unary) and x.op != "-":
                self.err(f"'{x.op}' cannot appear in {what}", x.span)
                return x
            if isinstance(x, N.Call):
                fns = N.EXTENT_FUNCTIONS if not allow_params else {**N.MAP_FUNCTIONS, "ceil": 1}
                if x.fn not in fns:
                    self.err(f"function '{x.fn}' cannot appear in {what}", x.span)
                    return x
                if len(x.args) != fns[x.fn]:
                    self.err(f"'{x.fn}' takes {fns[x.fn]} argument(s), got {len(x.args)}", x.span)
                    return x
                return replace(x, args=tuple(go(a) for a in x.args))
            if isinstance(x, N.BinOp):
                return replace(x, left=go(x.left), right=go(x.right))
            if isinstance(x, N.Unary):
                return replace(x, operand=go(x.operand))
            return x
        return go(e)

    # ------------------------------------------------------------------ Einsums
    def check_einsums(self) -> list[N.Einsum]:
        out = []
        for idx, s in enumerate(self.m.statements):
            if isinstance(s, N.Einsum):
                e = self.check_einsum(s, len(out))
                if e is not None:
                    out.append(e)
                else:
                    self.failed.add(s.tensor)
        return out

    def check_einsum(self, e: N.Einsum, pos: int) -> N.Einsum | None:
        n_err = len(self.errors)
        name = e.tensor
        # ---- the left-hand side
        if name in self.params or name in self.ranks or name in self.var_rank:
            self.err(f"'{name}' is a param, rank or rank variable, not a tensor", e.span)
            return None
        decl = self.decls.get(name)
        if decl is not None and decl.kind == "input":
            self.err(f"cannot assign to input '{name}'", e.span,
                     note("declared as an input here", decl.span))
            return None
        lhs_vars: list[str] = []
        for ix in e.indices:
            if ix.kind == "invalid":
                self.err(ix.problem, ix.span)
                continue
            if ix.var not in self.var_rank:
                self.err(self.unknown_var_message(ix.var), ix.span)
                continue
            if ix.var in lhs_vars:
                self.err(f"index variable '{ix.var}' appears twice on the left-hand side", ix.span)
                continue
            lhs_vars.append(ix.var)
        if len(self.errors) > n_err:
            return None
        iter_idx = [i for i in e.indices if i.kind in ("init", "next")]
        if len(iter_idx) > 1:
            self.err("a statement may iterate over one rank only", iter_idx[1].span)
            return None
        kind = e.kind
        info = self.tensors.get(name)
        axes = tuple(i.var for i in e.indices)
        prev_def = self.defined_at.get(name)
        if kind == "plain":
            if info is not None and (info["defined_by"] or info.get("init")):
                self.err(f"'{name}' is assigned twice", e.span, note("first assigned here", prev_def))
                return None
        else:
            v = iter_idx[0].var
            ax = [i.var for i in e.indices].index(v)
            if info is not None and info["iter_axis"] is None and info["defined_by"]:
                self.err(f"'{name}' is assigned twice", e.span, note("first assigned here", prev_def))
                return None
            if kind == "init":
                if info is not None and info.get("init"):
                    self.err(f"'{name}' is initialized twice", e.span,
                             note("first initialized here", info["init"]))
                    return None
            else:
                if info is None or not info.get("init"):
                    if name in self.failed:  # its initialization was rejected (reported)
                        return None
                    self.err(f"recurrence for '{name}' has no initialization: write "
                             f"`{name}[{_idx_text(e.indices, v, '=0')}] = ...` above it", e.span)
                    return None
                if info.get("recur"):
                    self.err(f"'{name}' has two recurrences", e.span,
                             note("first recurrence here", info["recur"]))
                    return None
                if info["iter_axis"] != ax or info["axes"] != axes:
                    self.err(f"recurrence of '{name}' indexes it as [{', '.join(axes)}] but its "
                             f"initialization as [{', '.join(info['axes'])}]", e.span)
                    return None
        if decl is not None and decl.kind == "output":
            if tuple(decl.indices) != axes:
                self.err(f"output '{name}' is declared [{', '.join(decl.indices)}] but assigned "
                         f"[{', '.join(axes)}]", e.span, note("declared here", decl.span))
                return None
        # ---- the right-hand side, filter and annotations
        ctx = {"stmt": e, "kind": kind, "iter_var": e.iter_var, "lhs": name}
        rhs = self.resolve_value(e.rhs, ctx)
        filt = self.resolve_predicate(e.filter, ctx) if e.filter is not None else None
        if len(self.errors) > n_err:
            self.record_definition(e, name, axes, kind, pos)
            return None
        rhs_vars = _ordered_vars(rhs)
        filt_vars = _ordered_vars(filt) if filt is not None else []
        space = list(v for v in lhs_vars if not (kind == "init" and v == e.iter_var))
        for v in rhs_vars + filt_vars:
            if v not in space and v not in lhs_vars:
                space.append(v)
        if kind == "init" and e.iter_var in rhs_vars + filt_vars:
            self.err(f"an initialization defines only {e.iter_var}=0; its right-hand side cannot "
                     f"use '{e.iter_var}'", e.span)
        reduced_vars = [v for v in space if v not in lhs_vars]
        annotated: list[str] = []
        for red in e.annotations:
            for v in red.vars:
                if v not in self.var_rank:
                    self.err(self.unknown_var_message(v), red.span)
                elif v in lhs_vars:
                    self.err(f"'{v}' is on the left-hand side, so it is not reduced", red.span)
                elif v not in reduced_vars:
                    self.err(f"'{v}' does not appear on the right-hand side, so there is nothing "
                             "to reduce", red.span)
                elif v in annotated:
                    self.err(f"'{v}' is given two reduction operators", red.span)
                annotated.append(v)
        implicit = tuple(v for v in reduced_vars if v not in annotated)
        reductions = ((N.Reduction("sum", implicit, e.span),) if implicit else ()) + tuple(
            e.annotations)
        self.check_extents(rhs, e)
        if filt is not None:
            self.check_extents(filt, e)
        out = replace(e, rhs=rhs, filter=filt, space=tuple(space), reduced=reductions)
        if len(self.errors) == n_err:
            self.lint(out)
        self.record_definition(e, name, axes, kind, pos)
        if filt is not None or (len(self.errors) == n_err and self._intersects_masked(rhs)):
            self.filtered.add(name)
        return out

    def record_definition(self, e: N.Einsum, name: str, axes, kind: str, pos: int) -> None:
        info = self.tensors.get(name)
        if info is None:
            info = {"axes": axes, "kind": "temp", "dtype": "f32", "iter_axis": None, "defined_by": []}
            self.tensors[name] = info
        elif info["kind"] == "output" and not info["defined_by"] and not info.get("init"):
            info["axes"] = axes
        info["defined_by"].append(pos)
        if kind != "plain":
            info["iter_axis"] = [i.kind for i in e.indices].index("init" if kind == "init" else "next")
            info[kind] = e.span
        if name not in self.defined_at:
            self.defined_at[name] = e.span

    # ------------------------------------------------------------------ name resolution
    def resolve_value(self, x: N.Expr, ctx: dict) -> N.Expr:
        if isinstance(x, N.Num):
            return x
        if isinstance(x, N.Name):
            return self.resolve_name(x, ctx, value=True)
        if isinstance(x, N.Access):
            return self.resolve_access(x, ctx)
        if isinstance(x, N.BinOp):
            if x.op in N.CMP_OPS or x.op in N.BOOL_OPS:
                self.err(f"'{x.op}' is a predicate; predicates belong in a `where` filter", x.span)
                return x
            if x.op in ("//", "%"):
                self.err(f"'{x.op}' is only allowed in extents and index expressions", x.span)
                return x
            return replace(x, left=self.resolve_value(x.left, ctx),
                           right=self.resolve_value(x.right, ctx))
        if isinstance(x, N.Unary):
            if x.op == "not":
                self.err("'not' is a predicate; predicates belong in a `where` filter", x.span)
                return x
            return replace(x, operand=self.resolve_value(x.operand, ctx))
        if isinstance(x, N.Call):
            if x.fn not in N.MAP_FUNCTIONS:
                hint = " (`ceil` is for extents)" if x.fn == "ceil" else ""
                self.err(f"unknown function '{x.fn}'{hint}; known: "
                         + ", ".join(sorted(N.MAP_FUNCTIONS)), x.span)
                return x
            if len(x.args) != N.MAP_FUNCTIONS[x.fn]:
                self.err(f"'{x.fn}' takes {N.MAP_FUNCTIONS[x.fn]} argument(s), got {len(x.args)}",
                         x.span)
                return x
            return replace(x, args=tuple(self.resolve_value(a, ctx) for a in x.args))
        return x

    def resolve_name(self, x: N.Name, ctx: dict, value: bool) -> N.Expr:
        n = x.name
        if n in self.tensors or n in self.decls:
            return self.resolve_access(N.Access(n, (), x.span), ctx)
        if n in self.params:
            return N.Param(n, x.span)
        if n in self.ranks:
            return N.Extent(n, x.span)
        if n in self.var_rank:
            return N.Var(n, x.span)
        later = self.later_definition(n)
        if later is not None:
            self.err(f"'{n}' is used before its definition", x.span, note("defined here", later))
        elif n[:1].islower() and n.isidentifier() and len(n) <= 3:
            self.err(f"undeclared name '{n}' (an index variable needs `rank {n.upper()}`)", x.span)
        else:
            self.err(f"undeclared name '{n}'", x.span)
        return x

    def later_definition(self, name: str) -> Span | None:
        for s in self.m.statements:
            if isinstance(s, N.Einsum) and s.tensor == name:
                return s.span
        return None

    def resolve_access(self, a: N.Access, ctx: dict) -> N.Expr:
        name = a.tensor
        info = self.tensors.get(name)
        if name in self.params or name in self.ranks or name in self.var_rank:
            self.err(f"'{name}' is not a tensor", a.span)
            return a
        if info is None or (info["kind"] != "input" and not info["defined_by"]):
            if name in self.failed:  # its definition was rejected: already reported
                return a
            if name == ctx["lhs"]:
                self.err(f"'{name}' is used in its own definition (a cycle); an iterative tensor "
                         "reads its previous iterate as T[v] after an initialization T[v=0]", a.span)
                return a
            later = self.later_definition(name)
            if later is not None:
                self.err(f"'{name}' is used before its definition", a.span, note("defined here", later))
            else:
                self.err(f"undeclared tensor '{name}'", a.span)
            return a
        axes = info["axes"]
        if len(a.indices) != len(axes):
            self.err(f"'{name}' has {len(axes)} index(es) [{', '.join(axes)}] but is accessed with "
                     f"{len(a.indices)}", a.span)
            return a
        idx: list[N.Expr] = []
        for k, ix in enumerate(a.indices):
            r = self.resolve_index(ix, ctx)
            idx.append(r)
        out = replace(a, indices=tuple(idx))
        if info["iter_axis"] is not None:
            self.check_iterate_access(out, info, ctx)
        return out

    def resolve_index(self, ix: N.Expr, ctx: dict) -> N.Expr:
        def go(x: N.Expr) -> N.Expr:
            if isinstance(x, N.Name):
                if x.name in self.var_rank:
                    return N.Var(x.name, x.span)
                if x.name in self.ranks:
                    return N.Extent(x.name, x.span)
                if x.name in self.params:
                    return N.Param(x.name, x.span)
                if x.name in self.tensors:
                    self.err("a tensor used as an index (a gather) is not supported yet", x.span)
                    return x
                self.err(self.unknown_var_message(x.name) if x.name[:1].islower()
                         else f"undeclared name '{x.name}'", x.span)
                return x
            if isinstance(x, N.Num):
                if x.value != int(x.value):
                    self.err("an index must be an integer", x.span)
                return x
            if isinstance(x, N.Access):
                self.err("a tensor used as an index (a gather) is not supported yet", x.span)
                return x
            if isinstance(x, N.BinOp):
                if x.op not in N.ARITH_OPS:
                    self.err(f"'{x.op}' cannot appear in an index", x.span)
                    return x
                return replace(x, left=go(x.left), right=go(x.right))
            if isinstance(x, N.Unary):
                if x.op != "-":
                    self.err(f"'{x.op}' cannot appear in an index", x.span)
                    return x
                return replace(x, operand=go(x.operand))
            if isinstance(x, N.Call):
                if x.fn not in ("ceil", "max", "min", "abs"):
                    self.err(f"function '{x.fn}' cannot appear in an index", x.span)
                    return x
                return replace(x, args=tuple(go(a) for a in x.args))
            return x

        r = go(ix)
        problem = _affine_problem(r)
        if problem:
            self.err(problem, ix.span)
        return r

    def check_iterate_access(self, a: N.Access, info: dict, ctx: dict) -> None:
        """Reads of an iterative tensor: T[v] (previous), T[v+1] (new), T[EXTENT] (final), T[0]."""
        k = info["iter_axis"]
        ix = a.indices[k]
        v = info["axes"][k]
        rank = self.var_rank[v]
        recur_done = bool(info.get("recur"))
        in_own_recur = ctx["kind"] == "recur" and ctx["lhs"] == a.tensor
        in_loop = v in [i.var for i in ctx["stmt"].indices if i.kind != "init"]
        every = (isinstance(ix, N.Var) and ix.name == v) or (
            isinstance(ix, N.BinOp) and ix.op == "+" and isinstance(ix.left, N.Var)
            and ix.left.name == v)
        if every and not in_loop:
            self.err(f"{a.tensor}[{v}] and {a.tensor}[{v}+1] are iterates of a recurrence: only a "
                     f"statement indexed by {v} (run once per iterate) can read them; read the "
                     f"final iterate {a.tensor}[{rank}] instead (outputs of every iterate are not "
                     "supported yet)", a.span)
            return
        if isinstance(ix, N.Var) and ix.name == v:
            return  # previous iterate: readable anywhere after the initialization
        if (isinstance(ix, N.BinOp) and ix.op == "+" and isinstance(ix.left, N.Var)
                and ix.left.name == v and isinstance(ix.right, N.Num) and ix.right.value == 1):
            if in_own_recur:
                self.err(f"the recurrence of '{a.tensor}' reads its own new iterate "
                         f"{a.tensor}[{v}+1] (a cycle)", a.span)
            elif not recur_done and a.tensor not in self.failed:
                self.err(f"{a.tensor}[{v}+1] is read above the statement that defines it", a.span,
                         note("defined here", self.later_recurrence(a.tensor)))
            return
        if isinstance(ix, N.Extent) and ix.name == rank:
            if not recur_done and a.tensor not in self.failed:
                self.err(f"the final iterate {a.tensor}[{rank}] is read before the recurrence that "
                         "defines it", a.span, note("defined here", self.later_recurrence(a.tensor)))
            return
        if isinstance(ix, N.Num) and ix.value == 0:
            return
        self.err(f"malformed access to iterative tensor '{a.tensor}': its iterative index must be "
                 f"{v} (previous iterate), {v}+1 (new iterate), {rank} (final) or 0 (initial)",
                 ix.span if getattr(ix, "span", None) else a.span)

    def later_recurrence(self, name: str) -> Span | None:
        for s in self.m.statements:
            if isinstance(s, N.Einsum) and s.tensor == name and s.kind == "recur":
                return s.span
        return None

    def resolve_predicate(self, x: N.Expr, ctx: dict) -> N.Expr:
        if isinstance(x, N.BinOp) and x.op in N.BOOL_OPS:
            return replace(x, left=self.resolve_predicate(x.left, ctx),
                           right=self.resolve_predicate(x.right, ctx))
        if isinstance(x, N.Unary) and x.op == "not":
            return replace(x, operand=self.resolve_predicate(x.operand, ctx))
        if isinstance(x, N.BinOp) and x.op in N.CMP_OPS:
            return replace(x, left=self.resolve_pred_operand(x.left, ctx),
                           right=self.resolve_pred_operand(x.right, ctx))
        self.err("a `where` filter must be a comparison (<, <=, ==, !=, >=, >) or a combination "
                 "of comparisons with and/or/not", getattr(x, "span", None))
        return x

    def resolve_pred_operand(self, x: N.Expr, ctx: dict) -> N.Expr:
        for n in N.walk(x):
            if isinstance(n, N.Access) or (isinstance(n, N.Name) and n.name in self.tensors):
                self.err("data-dependent predicates (a tensor in a `where` filter) are not "
                         "supported yet", n.span)
                return x
            if (isinstance(n, N.BinOp) and n.op in N.CMP_OPS + N.BOOL_OPS) or (
                    isinstance(n, N.Unary) and n.op == "not"):
                self.err("a comparison cannot be an operand of a comparison", n.span)
                return x
        return self.resolve_index(x, ctx) if _is_integer_expr(x) else self.resolve_value(x, ctx)

    # ------------------------------------------------------------------ extents
    def check_extents(self, x: N.Expr, stmt: N.Einsum) -> None:
        """A plain variable index must range over the tensor axis's extent."""
        if self.extent_cycle:
            return
        for a in N.walk(x):
            if not isinstance(a, N.Access):
                continue
            info = self.tensors.get(a.tensor)
            if info is None:
                continue
            for k, ix in enumerate(a.indices):
                if not isinstance(ix, N.Var) or k >= len(info["axes"]):
                    continue
                axis_var = info["axes"][k]
                if ix.name == axis_var or k == info["iter_axis"]:
                    continue
                if axis_var not in self.var_rank or ix.name not in self.var_rank:
                    continue  # a bad declaration, reported there
                r1, r2 = self.var_rank[ix.name], self.var_rank[axis_var]
                try:
                    different = provably_different(self.sym_extent(r1), self.sym_extent(r2))
                except (NotConstant, TypeError, ValueError):
                    continue
                if different:
                    self.err(f"rank {r1} used with two extents: '{ix.name}' ranges over "
                             f"{_extent_text(r1, self.sym_extent(r1))}, but axis {k} of "
                             f"'{a.tensor}' has extent {_extent_text(r2, self.sym_extent(r2))}",
                             ix.span)

    # ------------------------------------------------------------------ warnings
    def lint(self, e: N.Einsum) -> None:
        sum_vars = set(e.reduced[0].vars) if e.reduced and e.reduced[0].op == "sum" else set()
        if sum_vars:
            self.lint_divisors(e.rhs, sum_vars)
            self.lint_nonlinear(e.rhs, sum_vars)
        if e.kind != "recur" and e.filter is None:
            self.lint_masked_union(e.rhs)

    def lint_divisors(self, x: N.Expr, sum_vars: set[str]) -> None:
        for n in N.walk(x):
            if isinstance(n, N.BinOp) and n.op == "/":
                varying = sorted(N.value_vars(n.right) & sum_vars)
                if varying:
                    self.warn(f"the divisor varies along the reduced variable(s) "
                              f"{', '.join(varying)}: each term is divided before the sum "
                              "(map, then reduce); if you meant to divide the sum, divide in a "
                              "separate Einsum", n.right.span)

    def lint_nonlinear(self, x: N.Expr, sum_vars: set[str]) -> None:
        for n in N.walk(x):
            if isinstance(n, N.Call) and n.fn in NONLINEAR:
                for arg in n.args:
                    for sub in N.walk(arg):
                        if isinstance(sub, N.BinOp) and sub.op == "*":
                            shared = (N.value_vars(sub.left) & N.value_vars(sub.right) & sum_vars)
                            if shared:
                                self.warn(f"'{n.fn}' is applied to each term of the sum over "
                                          f"{', '.join(sorted(shared))} before it is reduced; to "
                                          f"apply it to the reduced value (e.g. a dot product), "
                                          "compute the reduction in its own Einsum first", n.span)
                                return

    def _intersects_masked(self, x: N.Expr) -> bool:
        """Whether a value is absent wherever some masked tensor it reads is absent."""
        if isinstance(x, N.Access):
            return x.tensor in self.filtered
        union = (isinstance(x, N.BinOp) and x.op == "+") or (
            isinstance(x, N.Call) and x.fn in ("max", "min"))
        kids = [self._intersects_masked(c) for c in N.children(x)]
        return bool(kids) and (all(kids) if union else any(kids))

    def lint_masked_union(self, x: N.Expr) -> None:
        for n in N.walk(x):
            if isinstance(n, N.BinOp) and n.op == "+" or (
                    isinstance(n, N.Call) and n.fn in ("max", "min")):
                ops = (n.left, n.right) if isinstance(n, N.BinOp) else n.args
                masked = [o for o in ops if self._intersects_masked(o)]
                if masked and len(masked) < len(ops):
                    t = next(a.tensor for a in N.walk(masked[0]) if isinstance(a, N.Access)
                             and a.tensor in self.filtered)
                    self.warn(f"'{t}' is masked by a `where` filter, but '{n.op if isinstance(n, N.BinOp) else n.fn}'"
                              f" keeps the other operand where '{t}' is absent, so masked points "
                              "come back; put the filter on the Einsum that produces the final "
                              "scores", n.span)

    # ------------------------------------------------------------------ whole program
    def finish(self, einsums: list[N.Einsum]) -> Program:
        for name, d in self.decls.items():
            info = self.tensors.get(name)
            if d.kind == "output" and (info is None or not info["defined_by"]) \
                    and name not in self.failed:
                self.err(f"output '{name}' is never defined", d.span)
        for name, d in self.decls.items():
            info = self.tensors.get(name)
            if d.kind == "output" and info is not None and info.get("recur"):
                self.err(f"output '{name}' is an iterative tensor: outputs of every iterate are "
                         f"not supported yet; define the output from its final iterate instead",
                         d.span, note("its recurrence is here", info["recur"]))
        for name, info in self.tensors.items():
            if info.get("init") and not info.get("recur") and name not in self.failed:
                self.err(f"'{name}' is initialized as an iterative tensor but has no recurrence "
                         f"`{name}[... {info['axes'][info['iter_axis']]}+1 ...] = ...`", info["init"])
        used = {a.tensor for e in einsums for x in (e.rhs, e.filter) if x is not None
                for a in N.walk(x) if isinstance(a, N.Access)}
        if not self.errors:
            for name, d in self.decls.items():
                if d.kind == "input" and name not in used:
                    self.warn(f"input '{name}' is never used", d.span)
            outputs = {n for n, d in self.decls.items() if d.kind == "output"}
            for e in einsums:
                if e.tensor not in used and e.tensor not in outputs and e.kind == "plain":
                    self.warn(f"'{e.tensor}' is computed but never used (it is not an output)",
                              e.span)
        stops = []
        for s in self.m.statements:
            if isinstance(s, N.Stop):
                stops.append(self.check_stop(s, einsums))
        tensors = {n: TensorInfo(n, i["kind"], tuple(i["axes"]), i["dtype"], i["iter_axis"],
                                 tuple(i["defined_by"])) for n, i in self.tensors.items()}
        ranks = tuple(self.resolved_ranks[n] for n in self.ranks)
        params = tuple(self.resolved_params[n] for n in self.params)
        inputs = tuple(d for d in self.decls.values() if d.kind == "input")
        outputs = tuple(d for d in self.decls.values() if d.kind == "output")
        return Program(ranks, params, inputs, outputs, tuple(einsums), tuple(stops), tensors,
                       self.src, tuple(self.warnings))

    def check_stop(self, s: N.Stop, einsums: list[N.Einsum]) -> N.Stop:
        iter_vars = {e.iter_var for e in einsums if e.kind == "recur"}
        c = s.cond
        ok = (isinstance(c, N.BinOp) and c.op == ">=" and isinstance(c.left, N.Name)
              and isinstance(c.right, N.Name) and c.left.name in iter_vars
              and self.var_rank.get(c.left.name) == c.right.name)
        if not ok:
            self.err("a stopping condition must read `stop v >= EXTENT` for an iterative rank "
                     "variable v of rank EXTENT (it is implied and may be left out)", s.span)
            return s
        return N.Stop(N.BinOp(">=", N.Var(c.left.name, c.left.span), N.Extent(c.right.name, c.right.span),
                              c.span), s.span)


def _extent_text(rank: str, value) -> str:
    """`M` for a free extent, `F = 128` for a declared one."""
    return rank if str(value) == rank else f"{rank} = {value}"


def _offset(d) -> int:
    return d.span.start if d.span else 0


def _idx_text(indices, v, suffix) -> str:
    return ", ".join(i.var + suffix if i.var == v else i.var for i in indices)


def _ordered_vars(x: N.Expr | None) -> list[str]:
    out: list[str] = []
    if x is None:
        return out
    for n in N.walk(x):
        if isinstance(n, N.Var) and n.name not in out:
            out.append(n.name)
    return out


def _is_integer_expr(x: N.Expr) -> bool:
    """Whether a filter operand is an index-like expression (no value functions)."""
    return all(not (isinstance(n, N.Call) and n.fn in ("exp", "log", "sqrt", "tanh", "sigmoid"))
               and not (isinstance(n, N.BinOp) and n.op == "/") for n in N.walk(x))


def _affine_problem(x: N.Expr) -> str | None:
    """Why an index expression is not affine in rank variables, or None."""
    def has_var(e):
        return any(isinstance(n, N.Var) for n in N.walk(e))

    for n in N.walk(x):
        if isinstance(n, N.BinOp):
            if n.op == "*" and has_var(n.left) and has_var(n.right):
                return "an index must be affine in rank variables (a product of two variables is not)"
            if n.op == "/" and (has_var(n.left) or has_var(n.right)):
                return "an index must be affine in rank variables ('/' of a variable is not)"
            if n.op in ("//", "%") and has_var(n.right):
                return (f"an index may divide a variable expression by a constant ('{n.op}'), "
                        "but not by a variable")
        if isinstance(n, N.Call) and any(has_var(a) for a in n.args):
            return f"an index must be affine in rank variables ('{n.fn}' of a variable is not)"
    return None


def check(module: N.Module, source: Source) -> Program:
    """Check a parsed spec; raise `EinsumcError` with every error found."""
    c = _Checker(module, source)
    c.declare()
    einsums = c.check_einsums()
    prog = c.finish(einsums)
    if c.errors:
        raise EinsumcError(_sorted(c.errors), source, _sorted(c.warnings))
    return prog


def _sorted(ds: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(ds, key=lambda d: (d.span.start if d.span else -1))
