"""The multi-kernel path: a cascade that keeps several passes (or has no loop at all).

When a cascade cannot be lowered to one fused loop (`lower.prepare`), or the caller asks
for the cascade as written (`Config(opt=False)`), it is split into the fusion groups of
`einsumc.transforms.fusion.kernels` (the pass / sweep groups of the pass analysis, in
execution order), and each group becomes one `@triton.jit` kernel, launched in order.

Within a group:

* views (`BK[e, m1, m0] = K[e, m1*M0 + m0]`) are substituted into their readers, and maps
  (no reduction) that only this group reads are substituted too (recomputed where read);
* the *grid* variables are those every remaining statement of the group writes and none
  reduces; a symbolic one that some input read lacks (query positions) is tiled into the
  `BLOCK_R` rows of a program (launch axis 0); the other symbolic ones are one program per
  coordinate (launch axis 1); constant-extent ones are block dims of every program;
* each statement runs in program order; a symbolic variable that is not a grid variable
  is a `for` loop, over blocks of `BLOCK_L` lanes when every read indexes it plainly (and
  the read stays 2-D), else element by element; a reduction over a loop variable is a
  loop-carried accumulator (sum / max / min / prod), a reduction over block lanes is
  `tl.reduce` (padded lanes set to the identity), and a sum over one block variable of a
  product of two 2-D values is `tl.dot`;
* a statement's result stays in registers when it has only grid and constant variables
  and its readers in the group read it at the same coordinates; otherwise it is stored:
  to the output, and/or to f32 scratch in global memory (allocated by the launcher from
  the run-time extents) when a later statement or group reads it. A program only re-reads
  scratch at its own grid coordinates, after a barrier.

Absent points (ein-language.md section 3): a filter (affine, with `and` / `or` / `not`,
`//` and `%`) is a per-element mask evaluated in the kernel. Every value carries its
*presence* (a boolean block, or none when it is present everywhere): maps intersect the
presences of their operands, `+`, max(a, b) and min(a, b) unite them (an absent operand
reads as the identity); a reduction combines only present values (absent ones read as its
identity, padded lanes too) and is present where some point was (an int8 loop-carried
flag next to a loop-carried accumulator; an or-reduction over block lanes; for a `tl.dot`,
an or over the contracted lanes of one operand's presence, or a 0/1 dot of both); a filter
that does not involve the reduced variables is applied once to the reduced value. A tensor
that crosses groups and can be absent is stored with an int8 presence mask next to its f32
values (`pm_<T>`, same shape and strides); absent points are stored as 0, so nothing that
crosses a kernel is NaN or inf, and an output's absent points read 0. Filtered maps are not
inlined into their readers (they are statements of their group). Still refused: recurrences,
reads out of bounds (checked at launch from the extents: every extent at least 1 and every
compound index in bounds), diagonals. Such cascades raise an `EinsumcError` that says why.
"""
from __future__ import annotations

import dataclasses
import math
import os

from ...diagnostics import EinsumcError, error
from ...ir import nodes as N
from ...ir.printer import print_einsum, print_program
from ...ir.program import Program
from .lower import const_extent
from .names import Namer

#: lanes per block of a blocked loop variable
LOOP_BLOCK = 64
IDENT = {"sum": "0.0", "max": "float('-inf')", "min": "float('inf')", "prod": "1.0"}
COMBINE = {"sum": "_ein_sum", "max": "_ein_max", "min": "_ein_min", "prod": "_ein_prod"}


def _fail(msg, prog=None, span=None):
    raise EinsumcError([error(f"triton backend (multi-kernel): {msg}", span)],
                       prog.source if prog is not None else None)


def _npow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


_subst = N.substitute


def _inline(x, defs: dict):
    """Substitute the definitions `defs` (tensor -> map Einsum) into accesses of x."""
    if isinstance(x, N.Access):
        idx = tuple(_inline(i, defs) for i in x.indices)
        if x.tensor in defs:
            d = defs[x.tensor]
            return _inline(_subst(d.rhs, dict(zip(d.lhs_vars, idx))), defs)
        return N.Access(x.tensor, idx, x.span)
    if isinstance(x, N.BinOp):
        return N.BinOp(x.op, _inline(x.left, defs), _inline(x.right, defs), x.span)
    if isinstance(x, N.Unary):
        return N.Unary(x.op, _inline(x.operand, defs), x.span)
    if isinstance(x, N.Call):
        return N.Call(x.fn, tuple(_inline(a, defs) for a in x.args), x.span)
    return x


def _accesses(x):
    return [n for n in N.walk(x) if isinstance(n, N.Access)]


@dataclasses.dataclass
class Val:
    code: str
    vars: tuple          # block variables, in the kernel's order
    ld: bool = False     # a raw load (input dtype); otherwise f32
    pres: str | None = None   # boolean code: where the value is present (None: everywhere)
    pvars: tuple = ()         # block variables of `pres`


class Kernel:
    """One fusion group: its statements, variable roles, arguments and code."""

    def __init__(self, ml: "MultiLowering", index: int, stmts: list):
        self.ml, self.index, self.stmts = ml, index, stmts
        self.name = f"einsumc_kernel_g{index}"
        self.args: list[str] = []
        self.argkinds: list[tuple] = []
        self.consts: list[str] = []
        self.lines: list[str] = []
        self.tmp = 0
        self.filt = None


class MultiLowering:
    def __init__(self, prog: Program, why: str):
        self.prog = prog
        self.how = why
        self.nm = Namer()
        self.var_rank = {r.var: r.name for r in prog.ranks}
        self.inputs = {d.name: d for d in prog.inputs}
        self.outputs = {d.name: d for d in prog.outputs}
        self._check()
        self._plan()

    # ------------------------------------------------------------------ analysis
    def _check(self):
        prog = self.prog
        for e in prog.einsums:
            if e.kind != "plain":
                _fail(f"`{print_einsum(e)}` is a recurrence; the multi-kernel path lowers "
                      "cascades without iterative ranks", prog, e.span)
            if len(set(e.lhs_vars)) != len(e.lhs_vars):
                _fail(f"`{print_einsum(e)}` writes a diagonal", prog, e.span)
            for r in e.reduced:
                if N.REDUCE_OPS.get(r.op, r.op) not in IDENT:
                    _fail(f"reduction {r.op} is not supported", prog, e.span)
        for d in prog.inputs + prog.outputs:
            if d.dtype == "f64":
                _fail(f"'{d.name}' is declared f64", prog, d.span)

    def const_extent(self, rank: str):
        return const_extent(self.prog, rank)

    def vconst(self, v: str):
        return self.const_extent(self.var_rank[v])

    def axis_ranks(self, t: str) -> list[str]:
        if t in self.inputs:
            return [self.var_rank[v] for v in self.inputs[t].indices]
        return [self.var_rank[v] for v in self.defs[t].lhs_vars]

    def _plan(self):
        from ...transforms.fusion import kernels as fusion_kernels
        prog = self.prog
        es = list(prog.einsums)
        self.defs = {e.tensor: e for e in es}
        views = {}
        for e in es:
            if (not e.reduced and isinstance(e.rhs, N.Access) and e.rhs.tensor in self.inputs
                    and e.tensor not in self.outputs and e.filter is None):
                views[e.tensor] = e
        self.views = views
        groups = [[i for i in g if es[i].tensor not in views] for g in fusion_kernels(prog)]
        groups = [g for g in groups if g]
        self.group_of = {es[i].tensor: k for k, g in enumerate(groups) for i in g}
        readers: dict[str, set] = {}
        for i, e in enumerate(es):
            for a in _accesses(e.rhs):
                readers.setdefault(a.tensor, set()).add(i)
        self.groups = []
        # tensors stored to global memory (f32 scratch) because a later group reads them
        self.scratch: list[str] = []
        # tensors whose stored values come with a presence mask (they can be absent)
        self.absent: set[str] = set()
        for k, g in enumerate(groups):
            inl = {}
            for i in g:
                e = es[i]
                rd = readers.get(e.tensor, set()) - set()
                if (not e.reduced and e.tensor not in self.outputs and e.filter is None
                        and all(self.group_of.get(es[j].tensor) == k for j in rd)):
                    inl[e.tensor] = e
            defs = dict(views)
            stmts = []
            for i in g:
                e = es[i]
                if e.tensor in inl:
                    defs[e.tensor] = dataclasses.replace(e, rhs=_inline(e.rhs, defs))
                    continue
                stmts.append(dataclasses.replace(e, rhs=_inline(e.rhs, defs)))
            self.groups.append(stmts)
        stored_reads: dict[str, set] = {}
        for k, stmts in enumerate(self.groups):
            for e in stmts:
                for a in _accesses(e.rhs):
                    stored_reads.setdefault(a.tensor, set()).add(k)
        self.read_in = stored_reads
        for k, stmts in enumerate(self.groups):
            for e in stmts:
                if any(j != k for j in stored_reads.get(e.tensor, ())):
                    self.scratch.append(e.tensor)

    # ------------------------------------------------------------------ codegen
    def build(self, block_r: int = 64):
        self.block_r = block_r
        self.kernels = [self._kernel(k, stmts) for k, stmts in enumerate(self.groups)]
        return self.kernels

    def _kernel(self, k: int, stmts: list) -> Kernel:
        K = Kernel(self, k, stmts)
        self._K = K
        prog = self.prog
        reduced = {v for e in stmts for r in e.reduced for v in r.vars}
        common = None
        for e in stmts:
            common = set(e.lhs_vars) if common is None else common & set(e.lhs_vars)
        order: list[str] = []
        for e in stmts:
            for v in tuple(e.lhs_vars) + tuple(e.space):
                if v not in order:
                    order.append(v)
        grid = [v for v in order if v in (common or set()) and v not in reduced]
        sym_grid = [v for v in grid if self.vconst(v) is None]
        in_reads = [a for e in stmts for a in _accesses(e.rhs) if a.tensor in self.inputs]

        def avars(a):
            return set().union(*[N.value_vars(i) for i in a.indices]) if a.indices else set()
        cands = [v for v in sym_grid if any(v not in avars(a) for a in in_reads)]
        if not in_reads and sym_grid:
            cands = [sym_grid[-1]]
        K.tile = cands[-1] if cands else None
        K.pid = [v for v in sym_grid if v != K.tile]
        K.order = order
        K.mode = {}
        for v in order:
            if v == K.tile:
                K.mode[v] = "tile"
            elif v in K.pid:
                K.mode[v] = "pid"
            elif self.vconst(v) is not None:
                K.mode[v] = "const"
            else:
                K.mode[v] = "loop"   # per statement: "bloop" (blocks) or "scalar"
        # register-held results: only grid / const variables, read at the same coordinates
        K.regs: dict[str, Val] = {}
        K.hold = set()
        for i, e in enumerate(stmts):
            if not all(K.mode[v] in ("tile", "pid", "const") for v in e.lhs_vars):
                continue
            ok = True
            for f in stmts[i + 1:]:
                for a in _accesses(f.rhs):
                    if a.tensor == e.tensor and a.indices != tuple(N.Var(v) for v in e.lhs_vars):
                        ok = False
            if ok:
                K.hold.add(e.tensor)
        # reads of this group's own stored results must stay on the program's grid coordinates
        own = {e.tensor for e in stmts}
        for e in stmts:
            for a in _accesses(e.rhs):
                if a.tensor in own:
                    d = self.defs[a.tensor]
                    for lv, ix in zip(d.lhs_vars, a.indices):
                        if K.mode.get(lv) in ("tile", "pid") and ix != N.Var(lv):
                            _fail(f"`{print_einsum(e)}` reads '{a.tensor}' at another grid "
                                  "coordinate than its own", prog, e.span)
        K.blocks = {}
        for v in order:
            if K.mode[v] == "const":
                K.blocks[v] = max(16, _npow2(self.vconst(v)))
        # ---- code
        e_ = K.lines.append
        e_("pid_r = tl.program_id(0)")
        e_("pid_g = tl.program_id(1)")
        for v in reversed(K.pid):
            n = self.ext_code(K, self.var_rank[v])
            e_(f"{self.nm('var', v)} = pid_g % {n}")
            e_(f"pid_g = pid_g // {n}")
        if K.tile:
            iv = self.nm("var", K.tile)
            e_(f"{iv} = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)")
        for v in order:
            if K.mode[v] == "const":
                e_(f"{self.nm('var', v)} = tl.arange(0, {K.blocks[v]})")
        self._statements(K)
        return K

    # ---- arguments
    def arg(self, K: Kernel, name: str, kind: tuple) -> str:
        if name not in K.args:
            K.args.append(name)
            K.argkinds.append(kind)
        return name

    def ext_code(self, K: Kernel, rank: str) -> str:
        c = self.const_extent(rank)
        if c is not None:
            return str(c)
        return self.arg(K, self.nm("extent", rank), ("extent", rank))

    def ptr(self, K: Kernel, t: str, where: str) -> str:
        """where: "in" (an input), "ws" (f32 scratch), "out" (an output)."""
        kind = {"in": "input", "ws": "scratch", "out": "output", "pws": "presence"}[where]
        p = self.arg(K, self.nm(kind, t), ("ptr", (where, t)))
        return p

    def stride(self, K: Kernel, t: str, where: str, j: int) -> str:
        return self.arg(K, self.nm("stride", f"{where}_{t}_{j}"), ("stride", (where, t, j)))

    # ---- values
    def new(self, K: Kernel, base="x") -> str:
        K.tmp += 1
        return f"{base}{K.tmp}"

    def ivar(self, K: Kernel, v: str) -> str:
        """A variable's coordinates: a blocked loop variable has its own name (a block),
        so that Triton sees one type per name (an element loop over it is an int)."""
        iv = self.nm("var", v)
        return iv + "_blk" if K.smode.get(v) == "bloop" else iv

    def blk(self, K: Kernel, v: str) -> str:
        m = K.smode[v]
        if m == "tile":
            return "BLOCK_R"
        if m == "const":
            return str(K.blocks[v])
        return "BLOCK_L"

    def is_block(self, K: Kernel, v: str) -> bool:
        return K.smode[v] in ("tile", "const", "bloop")

    def sort(self, K: Kernel, vs) -> tuple:
        return tuple(v for v in K.order if v in set(vs))

    def expand(self, code: str, have: tuple, want: tuple) -> str:
        if have == want or not have:
            return code
        return f"{_atomic(code)}[{', '.join(':' if v in have else 'None' for v in want)}]"

    def valid(self, K: Kernel, v: str, want: tuple) -> str | None:
        """Validity of the padded lanes of block variable v, expanded to `want`."""
        m = K.smode[v]
        iv = self.ivar(K, v)
        if m == "const":
            if K.blocks[v] == self.vconst(v):
                return None
            cond = f"({iv} < {self.vconst(v)})"
        elif m in ("tile", "bloop"):
            cond = f"({iv} < {self.ext_code(K, self.var_rank[v])})"
        else:
            return None
        return self.expand(cond, (v,), want)

    def mask_of(self, K: Kernel, vs: tuple) -> str | None:
        ms = [m for m in (self.valid(K, v, vs) for v in vs) if m]
        return " & ".join(ms) if ms else None

    def int_code(self, K: Kernel, x, want: tuple) -> str:
        if isinstance(x, N.Var):
            iv = self.ivar(K, x.name)
            return self.expand(iv, (x.name,), want) if self.is_block(K, x.name) else iv
        if isinstance(x, N.Num):
            if not float(x.value).is_integer():
                _fail(f"index {x.value} is not an integer", self.prog)
            return str(int(x.value))
        if isinstance(x, N.Extent):
            return self.ext_code(K, x.name)
        if isinstance(x, N.Param):
            return self.arg(K, self.nm("param", x.name), ("param", x.name))
        if isinstance(x, N.Unary) and x.op == "-":
            return f"(-{self.int_code(K, x.operand, want)})"
        if isinstance(x, N.BinOp) and x.op in ("+", "-", "*"):
            return f"({self.int_code(K, x.left, want)} {x.op} {self.int_code(K, x.right, want)})"
        if isinstance(x, N.BinOp) and x.op in ("//", "%"):  # filters only (indices: checked)
            fn = "_ein_fdiv" if x.op == "//" else "_ein_fmod"
            return f"{fn}({self.int_code(K, x.left, want)}, {self.int_code(K, x.right, want)})"
        _fail(f"index expression `{_txt(x)}` is not supported", self.prog)

    def load(self, K: Kernel, a: N.Access) -> Val:
        t = a.tensor
        where = "in" if t in self.inputs else "ws"
        vs = self.sort(K, [v for ix in a.indices for v in N.value_vars(ix)
                           if self.is_block(K, v)])
        p = self.ptr(K, t, where)
        offs = [f"{self.int_code(K, ix, vs)} * {self.stride(K, t, where, j)}"
                for j, ix in enumerate(a.indices)]
        addr = p + "".join(f" + {o}" for o in offs)
        m = self.mask_of(K, vs)
        key = (addr, m, K.depth)
        if key in K.cache:
            return K.cache[key]
        name = self.new(K, "ld")
        if m:
            K.emit(f"{name} = tl.load({addr}, mask={m}, other=0.0)")
        else:
            K.emit(f"{name} = tl.load({addr})")
        pres = None
        if where == "ws" and t in self.absent:
            pp = self.ptr(K, t, "pws")
            paddr = pp + "".join(f" + {o}" for o in offs)
            pres = self.new(K, "pr")
            if m:
                K.emit(f"{pres} = tl.load({paddr}, mask={m}, other=0) != 0")
            else:
                K.emit(f"{pres} = tl.load({paddr}) != 0")
        K.cache[key] = Val(name, vs, ld=where == "in", pres=pres, pvars=vs if pres else ())
        return K.cache[key]

    # ---- presence (absent points, ein-language.md section 3)
    def pexp(self, v: Val, want: tuple) -> str | None:
        """v's presence expanded to `want` (None: present everywhere)."""
        if v.pres is None:
            return None
        return self.expand(v.pres, v.pvars, want)

    def pand(self, *vals):
        """Intersection of the presences of vals: (code, vars)."""
        ps = [v for v in vals if v.pres is not None]
        if not ps:
            return None, ()
        if len(ps) == 1:
            return ps[0].pres, ps[0].pvars
        pv = self.sort(self._K, [u for v in ps for u in v.pvars])
        return " & ".join(f"({self.pexp(v, pv)})" for v in ps), pv

    def masked(self, K: Kernel, v: Val, ident: str) -> Val:
        """v with its absent points set to `ident` (its variables grow by its presence's)."""
        if v.pres is None:
            return v
        vs = self.sort(K, v.vars + v.pvars)
        code = f"tl.where({self.pexp(v, vs)}, {self.expand(self.f32(v), v.vars, vs)}, {ident})"
        if not vs:
            code = f"tl.where({v.pres}, {self.f32(v)}, {ident})"
        return Val(code, vs, pres=v.pres, pvars=v.pvars)

    def pred_code(self, K: Kernel, x, want: tuple) -> str:
        if isinstance(x, N.BinOp) and x.op in ("and", "or"):
            a, b = self.pred_code(K, x.left, want), self.pred_code(K, x.right, want)
            return f"(({a}) {'&' if x.op == 'and' else '|'} ({b}))"
        if isinstance(x, N.Unary) and x.op == "not":
            return f"(~({self.pred_code(K, x.operand, want)}))"
        if isinstance(x, N.BinOp) and x.op in N.CMP_OPS:
            a, b = self.int_code(K, x.left, want), self.int_code(K, x.right, want)
            return f"({a} {x.op} {b})"
        _fail(f"predicate `{_txt(x)}` is not supported", self.prog)

    def with_filter(self, K: Kernel, v: Val, filt) -> Val:
        fv = self.sort(K, [u for u in N.value_vars(filt) if self.is_block(K, u)])
        name = self.new(K, "fl")
        K.emit(f"{name} = {self.pred_code(K, filt, fv)}")
        f = Val("", (), pres=name, pvars=fv)
        pc, pv = self.pand(v, f)
        return Val(v.code, v.vars, v.ld, pres=pc, pvars=pv)

    def f32(self, v: Val) -> str:
        return f"{_atomic(v.code)}.to(tl.float32)" if v.ld else v.code

    def ev(self, K: Kernel, x) -> Val:
        folded = self.fold(x)
        if folded is not None:
            return Val(_num(folded), ())
        if isinstance(x, N.Num):
            return Val(_num(x.value), ())
        if isinstance(x, N.Extent):
            return Val(f"({self.ext_code(K, x.name)} * 1.0)", ())
        if isinstance(x, N.Param):
            return Val(self.arg(K, self.nm("param", x.name), ("param", x.name)), ())
        if isinstance(x, N.Var):
            iv = self.ivar(K, x.name)
            if self.is_block(K, x.name):
                return Val(f"{iv}.to(tl.float32)", (x.name,))
            return Val(f"({iv} * 1.0)", ())
        if isinstance(x, N.Access):
            if x.tensor in K.regs:
                return K.regs[x.tensor]
            return self.load(K, x)
        if isinstance(x, N.Unary) and x.op == "-":
            v = self.ev(K, x.operand)
            return Val(f"(-{_atomic(self.f32(v))})", v.vars, pres=v.pres, pvars=v.pvars)
        if isinstance(x, N.BinOp) and x.op in ("+", "-", "*", "/"):
            a, b = self.ev(K, x.left), self.ev(K, x.right)
            if x.op == "+" and (a.pres or b.pres):  # a union: an absent operand is ignored
                return self._union(K, a, b, "0.0", "({} + {})")
            pc, pv = self.pand(a, b)
            vs = self.sort(K, a.vars + b.vars)
            ca, cb = self.expand(self.f32(a), a.vars, vs), self.expand(self.f32(b), b.vars, vs)
            if x.op == "/":
                fb = self.fold(x.right)
                if fb is not None and fb != 0:
                    return Val(f"({ca} / {cb})", vs, pres=pc, pvars=pv)
                return Val(f"_ein_div({ca}, {cb})", vs, pres=pc, pvars=pv)
            if x.op == "-" and _may_be_minus_inf(x.left) and _may_be_minus_inf(x.right):
                # (-inf) - (-inf) is -inf (absent-point rule 5): both sides may hold -inf
                return Val(f"_ein_sub({ca}, {cb})", vs, pres=pc, pvars=pv)
            return Val(f"({ca} {x.op} {cb})", vs, pres=pc, pvars=pv)
        if isinstance(x, N.Call):
            args = [self.ev(K, y) for y in x.args]
            if x.fn in ("max", "min") and len(args) == 2 and any(a.pres for a in args):
                return self._union(K, args[0], args[1], IDENT[x.fn],
                                   "tl.maximum({}, {})" if x.fn == "max" else
                                   "tl.minimum({}, {})")
            pc, pv = self.pand(*args)
            vs = self.sort(K, [v for a in args for v in a.vars])
            cs = [self.expand(self.f32(a), a.vars, vs) for a in args]
            if not vs:
                cs = [f"({c} + tl.full((), 0.0, tl.float32))" if not a.vars and not _is_name(c)
                      else c for c, a in zip(cs, args)]
            fn = {"exp": "tl.exp", "log": "tl.log", "sqrt": "tl.sqrt", "abs": "tl.abs",
                  "max": "tl.maximum", "min": "tl.minimum", "tanh": "_ein_tanh",
                  "sigmoid": "_ein_sigmoid"}.get(x.fn)
            if fn is None:
                _fail(f"function {x.fn} is not supported", self.prog)
            return Val(f"{fn}({', '.join(cs)})", vs, pres=pc, pvars=pv)
        _fail(f"expression `{_txt(x)}` is not supported", self.prog)

    def _union(self, K: Kernel, a: Val, b: Val, ident: str, fmt: str) -> Val:
        """`+`, max, min: present where either operand is; an absent operand reads as the
        identity."""
        a, b = self.masked(K, a, ident), self.masked(K, b, ident)
        vs = self.sort(K, a.vars + b.vars)
        ca, cb = self.expand(self.f32(a), a.vars, vs), self.expand(self.f32(b), b.vars, vs)
        if a.pres is None or b.pres is None:
            pc, pv = None, ()
        else:
            pv = self.sort(K, a.pvars + b.pvars)
            pc = f"({self.pexp(a, pv)}) | ({self.pexp(b, pv)})"
        return Val(fmt.format(ca, cb), vs, pres=pc, pvars=pv)

    def fold(self, x):
        """The value of a variable-free, tensor-free expression with constant extents."""
        try:
            return _py_eval(x, self)
        except _NoFold:
            return None

    # ---- statements
    def _modes(self, K: Kernel, e: N.Einsum, local: set) -> dict:
        """Loop variables of a statement: in blocks ("bloop") where every read indexes them
        plainly and stays 2-D, else element by element ("scalar")."""
        modes = dict(K.mode)
        accs = _accesses(e.rhs)
        for v in e.space:
            if K.mode.get(v) != "loop":
                continue
            ok = True
            for a in accs:
                if a.tensor in K.regs or a.tensor in local:
                    continue
                vs_a = set().union(*[N.value_vars(i) for i in a.indices]) if a.indices else set()
                if v not in vs_a:
                    continue
                if N.Var(v) not in a.indices:
                    ok = False
                nblk = [u for u in vs_a if K.mode.get(u) in ("tile", "const")
                        or (K.mode.get(u) == "loop" and u != v)]
                if len(nblk) + 1 > 2:
                    ok = False
            modes[v] = "bloop" if ok else "scalar"
        return modes

    def _statements(self, K: Kernel):
        """Consecutive statements with the same outer loops (their written loop variables)
        share one loop nest; what one writes, a later one of the nest reads from registers
        when it reads it at the same coordinates."""
        stmts = K.stmts
        i = 0
        while i < len(stmts):
            e = stmts[i]
            modes = [self._modes(K, e, set())]
            loops = tuple((v, modes[0][v]) for v in e.lhs_vars if modes[0][v] in ("bloop", "scalar"))
            nest = [e]
            j = i + 1
            while loops and j < len(stmts):
                f = stmts[j]
                local = {x.tensor for x in nest}
                ok = all(a.indices == tuple(N.Var(v) for v in self.defs[a.tensor].lhs_vars)
                         for a in _accesses(f.rhs) if a.tensor in local)
                m = self._modes(K, f, local)
                fl = [v for v in f.lhs_vars if m[v] in ("bloop", "scalar")]
                if not ok or sorted(fl) != sorted(v for v, _ in loops) or any(
                        mode == "bloop" and m[v] != "bloop" for v, mode in loops):
                    break
                m.update(dict(loops))  # the nest's modes (element by element always works)
                nest.append(f)
                modes.append(m)
                j += 1
            self._nest(K, nest, modes, loops, stmts[j:])
            i = j

    def _nest(self, K: Kernel, nest: list, modes: list, loops: tuple, after: list):
        K.depth = 0
        K.cache = {}

        def emit(line):
            K.lines.append("    " * K.depth + line)
        K.emit = emit
        for e in nest:
            emit(f"# {_comment(print_einsum(self.defs[e.tensor]))}")
        K.smode = dict(modes[0])
        filts = [e.filter for e in nest]
        for v, _m in loops:  # every statement filtered: skip the blocks no filter admits
            self._open_loop(K, v, filts if all(f is not None for f in filts) else None)
        local = []
        barrier = False
        for e, m in zip(nest, modes):
            K.smode = dict(m)
            red = {v for r in e.reduced for v in r.vars}
            # a filter over reduced variables masks each point; else the reduced value
            K.filt = e.filter if e.filter is not None and set(N.value_vars(e.filter)) & red \
                else None
            val = self._reduce(K, e, len(e.reduced))
            if e.filter is not None and K.filt is None:
                val = self.with_filter(K, val, e.filter)
            K.filt = None
            out_vars = self.sort(K, [v for v in e.lhs_vars if self.is_block(K, v)])
            read_later = any(a.tensor == e.tensor for f in after for a in _accesses(f.rhs))
            read_nest = any(a.tensor == e.tensor for f in nest for a in _accesses(f.rhs))
            if e.tensor in K.hold or read_nest:
                name = self.nm("tensor", e.tensor)
                code = self._broadcast(K, self.f32(val), val.vars, out_vars)
                emit(f"{name} = {code}")
                pres = None
                if val.pres is not None:
                    pres = self.new(K, "pr")
                    emit(f"{pres} = {val.pres}")
                K.regs[e.tensor] = Val(name, out_vars, pres=pres,
                                       pvars=val.pvars if pres else ())
                val = K.regs[e.tensor]
                if e.tensor not in K.hold:
                    local.append(e.tensor)
            targets = []
            if e.tensor in self.outputs:
                targets.append("out")
            if e.tensor in self.scratch or (read_later and e.tensor not in K.hold):
                targets.append("ws")
            if targets:
                sv = self.masked(K, val, "0.0")  # an absent point reads 0
                code = self._broadcast(K, self.f32(sv), sv.vars, out_vars)
                name = self.new(K, "st")
                emit(f"{name} = {code}")
                msk = self.mask_of(K, out_vars)
                if val.pres is not None and "ws" in targets:
                    self.absent.add(e.tensor)
                    targets.append("pws")
                    pname = self.new(K, "pst")
                    pc = self._broadcast(K, f"tl.where({val.pres}, 1.0, 0.0)", val.pvars,
                                         out_vars)
                    emit(f"{pname} = ({pc}).to(tl.int8)")
                for where in targets:
                    p = self.ptr(K, e.tensor, where)
                    offs = "".join(
                        f" + {self.int_code(K, N.Var(v), out_vars)} * "
                        f"{self.stride(K, e.tensor, 'ws' if where == 'pws' else where, j)}"
                        for j, v in enumerate(e.lhs_vars))
                    cast = f"{name}.to({p}.dtype.element_ty)" if where == "out" else name
                    if where == "pws":
                        cast = pname
                    emit(f"tl.store({p}{offs}, {cast}" + (f", mask={msk})" if msk else ")"))
            if read_later and e.tensor not in K.hold:
                barrier = True
        for t in local:  # registers of a loop nest do not outlive it
            del K.regs[t]
        K.depth = 0
        K.cache = {}
        if barrier:
            emit("tl.debug_barrier()")

    def _broadcast(self, K: Kernel, code: str, have: tuple, want: tuple) -> str:
        c = self.expand(code, have, want)
        if have != want:
            shape = ", ".join(self.blk(K, v) for v in want)
            c = f"({c} + tl.full([{shape}], 0.0, tl.float32))" if want else c
        return c

    def _open_loop(self, K: Kernel, v: str, filters=None):
        """A loop over v; with `filters` (the statements' filters, all of them), only over
        the range where some filter can hold for some row of the program (interval bounds
        from affine atoms `v <op> expr` of the row / program variables): the skipped points
        are absent (their presence is never stored: the presence scratch starts at 0)."""
        K.cache = {k: x for k, x in K.cache.items() if k[2] <= K.depth}
        iv = self.ivar(K, v)
        n = self.ext_code(K, self.var_rank[v])
        lo, hi = self._loop_range(K, v, filters) if filters else (None, None)
        if K.smode[v] == "scalar":
            a = "0" if lo is None else f"tl.maximum({lo}, 0)"
            b = n if hi is None else f"tl.minimum({hi}, {n})"
            K.emit(f"for {iv} in range({a}, {b}):")
            K.depth += 1
        else:
            s = f"s_{iv}"
            a = "0" if lo is None else f"(tl.maximum({lo}, 0) // BLOCK_L) * BLOCK_L"
            b = n if hi is None else f"tl.minimum({hi}, {n})"
            K.emit(f"for {s} in range({a}, {b}, BLOCK_L):")
            K.depth += 1
            K.emit(f"{iv} = {s} + tl.arange(0, BLOCK_L)")

    def _lin(self, K: Kernel, x):
        """{term: coefficient} of an affine integer expression (terms: ("v", var) or
        ("c", code)), or None."""
        if isinstance(x, N.Num):
            return {("c", "1"): int(x.value)} if float(x.value).is_integer() else None
        if isinstance(x, N.Var):
            return {("v", x.name): 1}
        if isinstance(x, N.Extent):
            return {("c", self.ext_code(K, x.name)): 1}
        if isinstance(x, N.Param):
            return {("c", self.arg(K, self.nm("param", x.name), ("param", x.name))): 1}
        if isinstance(x, N.Unary) and x.op == "-":
            a = self._lin(K, x.operand)
            return None if a is None else {k: -c for k, c in a.items()}
        if isinstance(x, N.BinOp) and x.op in ("+", "-"):
            a, b = self._lin(K, x.left), self._lin(K, x.right)
            if a is None or b is None:
                return None
            out = dict(a)
            for k, c in b.items():
                out[k] = out.get(k, 0) + (c if x.op == "+" else -c)
            return out
        if isinstance(x, N.BinOp) and x.op == "*":
            for f, g in ((x.left, x.right), (x.right, x.left)):
                if isinstance(f, N.Num) and float(f.value).is_integer():
                    b = self._lin(K, g)
                    return None if b is None else {k: int(f.value) * c for k, c in b.items()}
        return None

    def _extreme(self, K: Kernel, terms: dict, high: bool):
        """Code of the largest (high) / smallest value of sum(c * term) over the program's
        rows, or None when a term is not the row variable, a program variable or a
        constant."""
        parts = []
        for (kind, t), c in terms.items():
            if c == 0:
                continue
            if kind == "c":
                code = t
            elif K.mode.get(t) == "pid":
                code = self.nm("var", t)
            elif t == K.tile:
                first = "(pid_r * BLOCK_R)"
                n = self.ext_code(K, self.var_rank[t])
                last = f"(tl.minimum(pid_r * BLOCK_R + BLOCK_R, {n}) - 1)"
                code = last if (c > 0) == high else first
            else:
                return None
            parts.append(f"{c} * {code}" if c != 1 else code)
        return "(" + " + ".join(parts) + ")" if parts else "0"

    def _loop_range(self, K: Kernel, v: str, filters):
        """(lo, hi) codes bounding v over the points where some filter can hold."""
        los, his = [], []
        for f in filters:
            lo_f, hi_f = [], []
            atoms, stack = [], [f]
            while stack:
                x = stack.pop()
                if isinstance(x, N.BinOp) and x.op == "and":
                    stack += [x.left, x.right]
                else:
                    atoms.append(x)
            for x in atoms:
                if not (isinstance(x, N.BinOp) and x.op in ("<", "<=", ">", ">=", "==")):
                    continue
                a, b = self._lin(K, x.left), self._lin(K, x.right)
                if a is None or b is None:
                    continue
                d = dict(a)
                for k, c in b.items():
                    d[k] = d.get(k, 0) - c
                c = d.pop(("v", v), 0)
                op = x.op
                if c not in (1, -1):
                    continue
                if c == -1:  # -v + R op 0  <=>  v op' R
                    op = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "=="}[op]
                    rest = d
                else:        # v + R op 0  <=>  v op -R
                    rest = {k: -cc for k, cc in d.items()}
                rest = {(k if k[0] == "v" else ("c", k[1])): cc for k, cc in rest.items()}
                if op in ("<", "<=", "=="):
                    m = self._extreme(K, rest, True)
                    if m is not None:
                        hi_f.append(m if op == "<" else f"{m} + 1")
                if op in (">", ">=", "=="):
                    m = self._extreme(K, rest, False)
                    if m is not None:
                        lo_f.append(m if op == ">=" else f"{m} + 1")
            los.append(_fold_ext("tl.maximum", lo_f))
            his.append(_fold_ext("tl.minimum", hi_f))
        lo = None if any(x is None for x in los) else _fold_ext("tl.minimum", los)
        hi = None if any(x is None for x in his) else _fold_ext("tl.maximum", his)
        return lo, hi

    def _static_vars(self, K: Kernel, e: N.Einsum, level: int) -> tuple:
        vs = set()
        for a in _accesses(e.rhs):
            if a.tensor in K.regs:
                vs |= set(K.regs[a.tensor].vars)
            else:
                for ix in a.indices:
                    vs |= {v for v in N.value_vars(ix) if self.is_block(K, v)}
        for n in N.walk(e.rhs):
            if isinstance(n, N.Var) and self.is_block(K, n.name):
                vs.add(n.name)
        for r in e.reduced[:level]:
            vs -= set(r.vars)
        return self.sort(K, vs)

    def _reduce(self, K: Kernel, e: N.Einsum, level: int) -> Val:
        if level == 0:
            v = self.ev(K, e.rhs)
            if K.filt is not None:
                v = self.with_filter(K, v, K.filt)
            return v
        r = e.reduced[level - 1]
        op = N.REDUCE_OPS.get(r.op, r.op)
        loops = [v for v in r.vars if K.smode[v] in ("scalar", "bloop")]
        res_vars = self._static_vars(K, e, level)
        depth0 = K.depth
        acc = None
        if loops:
            acc = self.new(K, "acc")
            shape = ", ".join(self.blk(K, v) for v in res_vars)
            K.emit(f"{acc} = tl.full([{shape}], {IDENT[op]}, tl.float32)")
            pos = len(K.lines)
            for v in loops:
                self._open_loop(K, v, [K.filt] if K.filt is not None else None)
        inner = None
        blockvars = [v for v in r.vars if self.is_block(K, v)]
        if level == 1 and op == "sum" and len(blockvars) == 1 and K.filt is None:
            inner = self._try_dot(K, e.rhs, blockvars[0])
        if inner is None:
            x = self._reduce(K, e, level - 1)
            for v in blockvars:
                x = self._block_reduce(K, x, v, op)
            inner = x
        if loops:
            accp = None
            if inner.pres is not None:  # the points of the loop where some value is present
                accp = self.new(K, "accp")
                K.lines.insert(pos, "    " * depth0 + f"{accp} = tl.full([{shape}], 0, tl.int8)")
                pe = self.expand(f"tl.where({inner.pres}, 1, 0).to(tl.int8)", inner.pvars,
                                 res_vars)
                K.emit(f"{accp} = {accp} | {pe}")
                inner = self.masked(K, inner, IDENT[op])
            c = self.expand(self.f32(inner), inner.vars, res_vars)
            fn = {"sum": f"{acc} + {c}", "max": f"tl.maximum({acc}, {c})",
                  "min": f"tl.minimum({acc}, {c})", "prod": f"{acc} * {c}"}[op]
            K.emit(f"{acc} = {fn}")
            K.depth = depth0
            K.cache = {k: v for k, v in K.cache.items() if k[2] <= depth0}
            if accp is not None:
                return Val(acc, res_vars, pres=f"({accp} != 0)", pvars=res_vars)
            return Val(acc, res_vars)
        return inner

    def _block_reduce(self, K: Kernel, x: Val, v: str, op: str) -> Val:
        pres = None
        if x.pres is not None:
            if v in x.pvars:
                pres = self._any(K, x, v)
            x = self.masked(K, x, IDENT[op])  # absent points are the identity
            if pres is None:
                pres = Val("", (), pres=x.pres, pvars=x.pvars)
        r = self._block_reduce0(K, x, v, op)
        if pres is not None:
            r = Val(r.code, r.vars, r.ld, pres=pres.pres, pvars=pres.pvars)
        return r

    def _block_reduce0(self, K: Kernel, x: Val, v: str, op: str) -> Val:
        if v not in x.vars:
            if op in ("max", "min"):
                return x
            if op == "sum":
                m = K.smode[v]
                n = (str(self.vconst(v)) if m == "const" else
                     f"tl.minimum(BLOCK_L, {self.ext_code(K, self.var_rank[v])} - "
                     f"s_{self.ivar(K, v)})")
                return Val(f"({_atomic(self.f32(x))} * {n})", x.vars)
            _fail("a product over a variable the value does not depend on", self.prog)
        code = self.f32(x)
        m = self.valid(K, v, x.vars)
        if m:
            code = f"tl.where({m}, {code}, {IDENT[op]})"
        name = self.new(K, "r")
        K.emit(f"{name} = tl.reduce({code}, {x.vars.index(v)}, {COMBINE[op]})")
        return Val(name, tuple(u for u in x.vars if u != v))

    def _try_dot(self, K: Kernel, rhs, r: str) -> Val | None:
        fs = N.factors(rhs)
        dep, rest = [], []
        for f, recip in fs:
            vs = self._expr_vars(K, f)
            (dep if r in vs else rest).append((f, recip, vs))
        if any(recip for _, recip, _ in dep) or len(dep) < 2:
            return None
        others = set().union(*[vs for _, _, vs in dep]) - {r}
        if len(others) != 2:
            return None
        x, y = self.sort(K, others)
        ga = [(f, rc) for f, rc, vs in dep if vs <= {x, r}]
        gb = [(f, rc) for f, rc, vs in dep if vs <= {y, r} and not vs <= {x, r}]
        if len(ga) + len(gb) != len(dep) or not ga or not gb:
            return None
        if not any(x in self._expr_vars(K, f) for f, _ in ga) or \
                not any(y in self._expr_vars(K, f) for f, _ in gb):
            return None

        def operand(group, other):
            val = None
            for f, _ in group:
                v = self.ev(K, f)
                if val is None:
                    val = v
                else:
                    vs = self.sort(K, val.vars + v.vars)
                    pc, pv = self.pand(val, v)
                    val = Val(f"({self.expand(self.f32(val), val.vars, vs)} * "
                              f"{self.expand(self.f32(v), v.vars, vs)})", vs, pres=pc, pvars=pv)
            want = self.sort(K, (other, r))
            code = val.code if val.ld else self.f32(val)
            code = self._broadcast(K, code, val.vars, want) if val.vars != want else code
            m = self.valid(K, r, want)
            if val.pres is not None:  # absent products add nothing to the sum
                code = f"tl.where({self.pexp(val, want)}, {code}, 0.0)"
            if m:
                code = f"tl.where({m}, {code}, 0.0)"
            name = self.new(K, "op")
            K.emit(f"{name} = {code}")
            return name, want, val
        a, wa, va = operand(ga, x)
        b, wb, vb = operand(gb, y)
        if wa != (x, r):
            a = f"tl.trans({a})"
        if wb != (r, y):
            b = f"tl.trans({b})"
        name = self.new(K, "dot")
        K.emit(f"{name} = _ein_dot({a}, {b}, PREC, UPCAST)")
        pc, pv = self._dot_presence(K, va, wa, vb, wb, x, y, r)
        val = Val(name, (x, y), pres=pc, pvars=pv)
        for f, recip, _vs in rest:
            v = self.ev(K, f)
            vs = self.sort(K, val.vars + v.vars)
            pc, pv = self.pand(val, v)
            ca = self.expand(val.code, val.vars, vs)
            cb = self.expand(self.f32(v), v.vars, vs)
            if recip:
                fb = self.fold(f)
                val = Val(f"({ca} / {cb})" if fb not in (None, 0) else f"_ein_div({ca}, {cb})",
                          vs, pres=pc, pvars=pv)
            else:
                val = Val(f"({ca} * {cb})", vs, pres=pc, pvars=pv)
        return val

    def _dot_presence(self, K, va, wa, vb, wb, x, y, r):
        """Presence of sum_r a[x, r] * b[r, y]: some r where both are present."""
        if va.pres is None and vb.pres is None:
            return None, ()
        if va.pres is not None and vb.pres is not None and r in va.pvars and r in vb.pvars:
            def fmask(v, want, lay):
                c = self._broadcast(K, f"tl.where({v.pres}, 1.0, 0.0)", v.pvars, want)
                m = self.valid(K, r, want)
                if m:
                    c = f"tl.where({m}, {c}, 0.0)"
                return c if want == lay else f"tl.trans({c})"
            name = self.new(K, "pr")
            K.emit(f"{name} = tl.dot({fmask(va, wa, (x, r))}, {fmask(vb, wb, (r, y))}, "
                   "input_precision='ieee') > 0.5")
            return name, (x, y)
        parts = []
        for v in (va, vb):
            if v.pres is None:
                continue
            if r in v.pvars:
                parts.append(self._any(K, v, r))
            else:
                parts.append(Val("", (), pres=v.pres, pvars=v.pvars))
        return self.pand(*parts)

    def _any(self, K: Kernel, v: Val, r: str) -> Val:
        """Presence of v, or-reduced over block variable r (padded lanes absent)."""
        code = f"tl.where({v.pres}, 1, 0).to(tl.int8)"
        m = self.valid(K, r, v.pvars)
        if m:
            code = f"tl.where({m}, {code}, 0)"
        name = self.new(K, "pr")
        K.emit(f"{name} = tl.reduce({code}, {v.pvars.index(r)}, _ein_max) != 0")
        return Val("", (), pres=name, pvars=tuple(u for u in v.pvars if u != r))

    def _expr_vars(self, K: Kernel, x) -> set:
        vs = set()
        for n in N.walk(x):
            if isinstance(n, N.Var) and self.is_block(K, n.name):
                vs.add(n.name)
            if isinstance(n, N.Access) and n.tensor in K.regs:
                vs |= set(K.regs[n.tensor].vars)
        return vs


def _fold_ext(fn: str, xs: list):
    """fn(x0, fn(x1, ...)) of codes, None for none."""
    if not xs:
        return None
    out = xs[-1]
    for x in reversed(xs[:-1]):
        out = f"{fn}({x}, {out})"
    return out


class _NoFold(Exception):
    pass


def _py_eval(x, ml: MultiLowering):
    if isinstance(x, N.Num):
        return float(x.value)
    if isinstance(x, N.Extent):
        c = ml.const_extent(x.name)
        if c is None:
            raise _NoFold
        return float(c)
    if isinstance(x, N.Unary) and x.op == "-":
        return -_py_eval(x.operand, ml)
    if isinstance(x, N.BinOp) and x.op in ("+", "-", "*", "/"):
        a, b = _py_eval(x.left, ml), _py_eval(x.right, ml)
        if x.op == "/":
            return 0.0 if b == 0 else a / b
        return {"+": a + b, "-": a - b, "*": a * b}[x.op]
    if isinstance(x, N.Call) and x.fn in ("sqrt", "exp", "log", "abs"):
        a = _py_eval(x.args[0], ml)
        try:
            return {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "abs": abs}[x.fn](a)
        except (ValueError, OverflowError):
            raise _NoFold from None
    raise _NoFold


def _num(v: float) -> str:
    if v == math.inf:
        return "float('inf')"
    if v == -math.inf:
        return "float('-inf')"
    return repr(float(v))


def _atomic(code: str) -> str:
    import re
    return code if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", code) else f"({code})"


def _is_name(code: str) -> bool:
    import re
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", code))


def _may_be_minus_inf(x) -> bool:
    """Whether an expression's value may be -inf: it reads a tensor (an input, a max over
    -inf values), a param, a function (log 0) or an infinite literal; index arithmetic and
    finite constants cannot."""
    return any(isinstance(y, (N.Access, N.Param, N.Call))
               or (isinstance(y, N.Num) and math.isinf(y.value)) for y in N.walk(x))


def _txt(x) -> str:
    from ...ir.printer import print_expr
    return print_expr(x)


def _comment(s: str) -> str:
    return s.replace("\n", " ")


# =============================================================================== module
def _index_bounds(ml: MultiLowering):
    """(host expression of the largest index, axis rank, text) of every read whose index is
    not the axis's own variable: checked at launch, so that no read is out of bounds."""
    from .emit import _py_expr
    out = []
    seen = set()
    for stmts in ml.groups:
        for e in stmts:
            for a in _accesses(e.rhs):
                ranks = ml.axis_ranks(a.tensor)
                for j, ix in enumerate(a.indices):
                    if isinstance(ix, N.Var) and ml.var_rank[ix.name] == ranks[j]:
                        continue
                    for n in N.walk(ix):
                        if isinstance(n, N.BinOp) and n.op not in ("+", "*"):
                            _fail(f"index `{_txt(ix)}` of '{a.tensor}' may read out of bounds "
                                  "(out-of-bounds reads are not built on this path)", ml.prog)
                        if isinstance(n, (N.Param, N.Unary, N.Call)):
                            _fail(f"index `{_txt(ix)}` of '{a.tensor}' may read out of bounds "
                                  "(out-of-bounds reads are not built on this path)", ml.prog)
                    hi = _subst(ix, {v: N.BinOp("-", N.Extent(ml.var_rank[v]), N.Num(1.0))
                                     for v in N.value_vars(ix)})
                    key = (_txt(ix), a.tensor, j)
                    if key not in seen:
                        seen.add(key)
                        out.append((_py_expr(hi, None, "index"), ranks[j],
                                    f"index {_txt(ix)} of {a.tensor}"))
    return out


def emit_multipass(ml: MultiLowering, config) -> str:
    from .emit import (HELPERS, RUNTIME, _index_params, _py_expr, emit_bind_extents,
                       emit_bind_inputs)
    from .lower import BACKEND_VERSION
    prog = ml.prog
    kernels = ml.build(config.block_r)
    name = os.path.basename(prog.source.name) if prog.source else "<spec>"
    L = ["# Generated by einsumc (target: triton). Do not edit: regenerate from the spec.",
         f"# einsumc triton backend {BACKEND_VERSION} (multi-kernel path)",
         f"# Spec: {_comment(name)}", "#", "# The cascade:"]
    L += [f"#   {ln}" if ln else "#" for ln in print_program(prog).rstrip("\n").split("\n")]
    L += ["#", f"# Lowered as written, one kernel per fusion group ({ml.how}):"]
    for K in kernels:
        tensors = ", ".join(e.tensor for e in K.stmts)
        roles = (f"rows {K.tile}" if K.tile else "no rows") + \
            (f"; programs per {', '.join(K.pid)}" if K.pid else "")
        L.append(f"#   {K.name}: {tensors}  ({roles})")
    if ml.scratch:
        L.append(f"# Materialized in f32 scratch between kernels: {', '.join(ml.scratch)}")
    if ml.absent:
        L.append("# With an int8 presence mask (they can be absent): "
                 f"{', '.join(t for t in ml.defs if t in ml.absent)}")
    L += ["#", "", "import math", "", "import torch", "import triton",
          "import triton.language as tl", ""]
    L += HELPERS.strip("\n").split("\n")
    for K in kernels:
        ext_args = [a for a, k in zip(K.args, K.argkinds) if k[0] == "extent"]
        L += ["", "", f"@triton.jit(do_not_specialize={ext_args!r})" if ext_args
              else "@triton.jit"]
        sig = ", ".join(K.args + ["BLOCK_R: tl.constexpr", "BLOCK_L: tl.constexpr",
                                  "PREC: tl.constexpr", "UPCAST: tl.constexpr"])
        L.append(f"def {K.name}({sig}):")
        L += ["    " + ln for ln in K.lines]
    L += RUNTIME.split("\n")
    e = L.append
    e("")
    e("")
    e(f"BLOCK_L = {LOOP_BLOCK}")
    e("")
    e("")
    e("def launch(args, block_r=None, num_warps=None, num_stages=None, tf32=False, "
      "autotune=None, interpret=False, split=0):")
    e('    """Run the kernels of the fusion groups in order (see the header)."""')
    emit_bind_inputs(e, prog, ml.var_rank)
    emit_bind_extents(e, prog, None)
    used = sorted({ml.var_rank[v] for stmts in ml.groups for x in stmts
                   for v in tuple(x.space) + x.lhs_vars}
                  | {ml.var_rank[v] for d in prog.outputs for v in d.indices})
    for r in used:
        e(f"    if ext.get({r!r}) is None:")
        e(f"        raise EinsumcLaunchError('the extent of rank {r} is not bound: no input has "
          "an axis of that rank and it has no declared value')")
        e(f"    if ext[{r!r}] < 1:")
        e(f"        raise EinsumcLaunchError('rank {r} is empty: the multi-kernel path needs "
          "every extent to be at least 1 (no absent points)')")
    e("    prm = {}")
    ip = _index_params(prog)
    for p in prog.params:
        if p.value is None:
            e(f"    prm[{p.name!r}] = _param(args, {p.name!r}, {p.name in ip!r})")
        else:
            e(f"    prm[{p.name!r}] = {_py_expr(p.value, None, 'param')}")
    for hi, rank, text in _index_bounds(ml):
        e(f"    if {hi} >= ext[{rank!r}]:")
        msg = text + (" reads out of bounds (out-of-bounds reads, absent points, are not built on "
               "the multi-kernel path)")
        e(f"        raise EinsumcLaunchError({msg!r})")
    tdt = {"f16": "torch.float16", "bf16": "torch.bfloat16", "f32": "torch.float32"}
    outs = []
    refs = {}
    for k, d in enumerate(prog.outputs):
        shape = "".join(f"ext[{ml.var_rank[v]!r}], " for v in d.indices)
        e(f"    y{k} = torch.zeros(({shape}), dtype={tdt[d.dtype]}, device=dev)")
        outs.append((d.name, f"y{k}"))
        refs[("out", d.name)] = f"y{k}"
    for k, d in enumerate(prog.inputs):
        refs[("in", d.name)] = f"x{k}"
    ws = sorted({t for K in kernels for kind, w in K.argkinds if kind == "ptr"
                 for where, t in [w] if where == "ws"}, key=lambda t: list(ml.defs).index(t))
    for k, t in enumerate(ws):
        shape = "".join(f"ext[{r!r}], " for r in ml.axis_ranks(t))
        e(f"    w{k} = torch.empty(({shape}), dtype=torch.float32, device=dev)  # {t}")
        refs[("ws", t)] = f"w{k}"
        if t in ml.absent:
            e(f"    pm{k} = torch.zeros(({shape}), dtype=torch.int8, device=dev)  "
              f"# presence of {t}")
            refs[("pws", t)] = f"pm{k}"
    e("    result = {" + ", ".join(f"{n!r}: {y}" for n, y in outs) + "}")
    e(f"    BLOCK_R = block_r or {config.block_r}")
    e("    consts = dict(BLOCK_R=BLOCK_R, BLOCK_L=BLOCK_L, PREC='tf32' if tf32 else 'ieee', "
      "UPCAST=bool(interpret and any(t.dtype == torch.bfloat16 for t in ("
      + "".join(f"x{k}, " for k in range(len(prog.inputs))) + "))))")
    e("    opts = dict(num_warps=num_warps or 4, num_stages=num_stages or 2)")
    e("    LAST_LAUNCH.clear()")
    e("    LAST_LAUNCH['kernels'] = []")
    for K in kernels:
        call = []
        for a, (kind, w) in zip(K.args, K.argkinds):
            if kind == "extent":
                call.append(f"ext[{w!r}]")
            elif kind == "param":
                call.append(f"prm[{w!r}]")
            elif kind == "ptr":
                call.append(refs[w])
            elif kind == "stride":
                call.append(f"{refs[(w[0], w[1])]}.stride({w[2]})")
        g0 = (f"triton.cdiv(ext[{ml.var_rank[K.tile]!r}], BLOCK_R)" if K.tile else "1")
        g1 = " * ".join(f"ext[{ml.var_rank[v]!r}]" for v in K.pid) or "1"
        e(f"    grid = ({g0}, {g1})")
        e(f"    {K.name}[grid]({', '.join(call)}{', ' if call else ''}**consts, **opts)")
        e(f"    LAST_LAUNCH['kernels'].append(({K.name!r}, grid))")
    e("    return result")
    return "\n".join(L).rstrip("\n") + "\n"


# =============================================================================== AOT
def aot_multipass(program: Program, arch: int = 90, dtype: str = "f16", config=None,
                  shapes: dict | None = None) -> list[dict]:
    """Compile every kernel of the multi-kernel path for sm_`arch` without a GPU (as
    `aot.compile_kernel` does for the one-loop kernel): a dict per kernel with its name,
    registers and spill bytes (ptxas -v), shared memory and the dots in the TTGIR."""
    import re

    from triton.runtime.jit import JITFunction

    from . import loader
    from .aot import _TT, _ptxas_usage, compile_cold
    from .lower import Config
    from .target import generate
    config = config or Config(opt=False)
    text, ml = generate(program, config)  # DEFAULT: multi-kernel only where --opt fails
    if not isinstance(ml, MultiLowering):
        _fail("the program lowers to one fused kernel (use aot.compile_kernel)", program)
    mod = loader.load(text, interpret=False)
    from .emit import _index_params
    index_params = _index_params(program)
    out = []
    for K in ml.kernels:
        fn = getattr(mod, K.name)
        if not isinstance(fn, JITFunction):  # pragma: no cover
            fn = JITFunction(fn.fn)
        sig, consts, attrs = {}, {}, {}
        for n, (kind, w) in zip(K.args, K.argkinds):
            if kind == "ptr":
                sig[n] = ("*fp32" if w[0] == "ws" else "*i8" if w[0] == "pws"
                          else "*" + _TT[dtype])
            elif kind == "stride":
                _where, t, j = w
                last = len(ml.axis_ranks(t)) - 1
                if j == last:
                    consts[n], sig[n] = 1, "constexpr"
                else:
                    sig[n] = "i32"
            elif kind == "extent":
                sig[n] = "i32"
            else:  # a param: an integer where a filter or an index uses it
                sig[n] = "i32" if w in index_params else "fp32"
        consts.update(BLOCK_R=config.block_r, BLOCK_L=LOOP_BLOCK,
                      PREC="tf32" if config.tf32 else "ieee", UPCAST=False)
        for c in ("BLOCK_R", "BLOCK_L", "PREC", "UPCAST"):
            sig[c] = "constexpr"
        for i, n in enumerate(fn.arg_names):
            if sig[n].startswith("*") or (sig[n] == "i32" and n.startswith("s_")):
                attrs[(i,)] = [["tt.divisibility", 16]]
        try:
            k = compile_cold(fn, sig, consts, attrs, arch, config)
        except Exception as exc:
            _fail(f"--aot: Triton failed to compile {K.name} for sm_{arch} ({dtype}): "
                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  program)
        regs, st, ld = _ptxas_usage(k.asm["ptx"], arch)
        ttgir = k.asm.get("ttgir", "")
        dots = len(re.findall(r"ttng\.warp_group_dot ", ttgir)) + \
            len(re.findall(r"= tt\.dot ", ttgir))
        out.append(dict(kernel=K.name, arch=arch, dtype=dtype, regs=regs,
                        spills=(st or 0) + (ld or 0) if st is not None else None,
                        smem=int(k.metadata.shared), dots=dots))
    return out
