"""Lower a cascade to one fused Triton kernel: analysis (which rank goes where) and codegen.

The input is a checked program with one iterative rank whose Einsums form one fusion group
(the 1-pass form; `prepare` derives it with the online transform when the spec is written
naively). Every rank variable of the group gets a role:

    grid      parallel ranks the key-side inputs are indexed by (batch, KV heads): one
              program per coordinate, flattened into launch axis 1;
    loop      the iterative rank (m1): a `for` loop, running tensors are loop-carried;
    rows      the other parallel ranks of the outputs (query positions p, and ranks the
              key side lacks: the query heads g of GQA, h of MQA), tiled together into the
              BLOCK_R rows of a program (launch axis 0), so K/V tiles are shared by them;
    C         the tile rank under the loop (m0): the columns of the score tile;
    E         a rank contracted by a dot and absent from the outputs (the head dim e);
    F         a rank of the outputs present on the key side (the value dim f).

Values are Triton blocks over at most two of the groups R, C, E, F (canonical order),
scalars over grid ranks and the loop rank. A sum over one group of a product of two
2-D values is `tl.dot`; other reductions are `tl.reduce` with a max/sum/min combiner.

Absent points (docs/language.md, rule by rule) are tracked at compile time: each value
carries its presence as a conjunction of *atoms* (filter predicates, in-bounds tests of
reads, validity of padded block lanes, and `any` of those over a reduced group), and,
where known, the value that its absent lanes hold (`fill`). Masks are materialized only
where a reduction or a union needs them, and only with the atoms that vary along the
reduced group. Affine atoms are also analysed over the box of a tile: loop bounds skip
tiles that are fully masked, and a second copy of the loop body without any tile mask
runs the tiles that are fully unmasked.

The generated module uses only builtins of `triton.language` plus its own `@triton.jit`
helpers, so the interpreter can run it (the standard library's jit functions, e.g.
`tl.max`, cannot run in an interpreter set up after `triton` was imported).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from ...diagnostics import EinsumcError, error
from ...ir import nodes as N
from ...ir.printer import print_einsum, print_expr
from ...ir.program import Program
from .names import Namer

GROUPS = ("R", "C", "E", "F")
BACKEND_VERSION = "1"


def _fail(msg: str, prog: Program | None = None, span=None):
    raise EinsumcError([error(f"triton backend: {msg}", span)],
                       prog.source if prog is not None else None)


# =============================================================================== config
@dataclass(frozen=True)
class Config:
    """One point of the tuning space (see docs/triton.md)."""

    block_r: int = 64        # query rows per program (rows of the score tile)
    num_warps: int = 4
    num_stages: int = 2
    tile: int = 64           # the key tile used when the spec is not partitioned yet
    tf32: bool = False       # f32 inputs: tf32 tensor-core dots instead of exact (ieee) ones
    split: int = 0           # decode: key-rank splits across programs (0 = automatic)
    opt: bool = True         # False: a multi-pass cascade as written (one kernel per group)

    def key(self) -> str:
        return (f"r{self.block_r}w{self.num_warps}s{self.num_stages}t{self.tile}"
                f"{'tf32' if self.tf32 else 'ieee'}k{self.split}{'' if self.opt else 'asw'}")


#: the GPU autotuning space (rows x warps x stages); the first is the default
GPU_CONFIGS = (
    Config(64, 4, 2), Config(64, 8, 2), Config(128, 8, 2), Config(64, 4, 3), Config(128, 8, 3),
)
DEFAULT = GPU_CONFIGS[0]
#: the interpreter runs one config: big tiles keep its per-iteration cost low
INTERPRET_CONFIG = Config(64, 4, 1)


# =============================================================================== prepare
def prepare(prog: Program, tile: int = 64) -> tuple[Program, str]:
    """The 1-pass program to lower, and how it was derived from `prog`."""
    why = _lowerable(prog)
    if why is None:
        return prog, "as written"
    from ...transforms import optimize
    try:
        opt, _notes = optimize(prog, tile=tile)
    except EinsumcError:
        opt = None
    if opt is not None and _lowerable(opt) is None:
        return opt, f"after `--opt` (online softmax, key tile {tile})"
    _fail(f"cannot lower this cascade to one fused kernel: {why}; the Triton backend "
          "lowers cascades with one iterative rank (a loop) per kernel, and `--opt` did not "
          "derive such a form (multi-pass and multi-kernel lowering is not built yet)", prog)


def _lowerable(prog: Program) -> str | None:
    its = prog.iterative_vars
    if len(its) != 1:
        return ("it has no iterative rank" if not its else
                f"it has {len(its)} iterative ranks ({', '.join(its)})")
    it = its[0]
    for e in prog.einsums:
        for r in e.reduced:
            if it in r.vars:
                return f"`{print_einsum(e)}` reduces the iterative rank {it}"
    return None


# =============================================================================== atoms
@dataclass(frozen=True)
class Raw:
    """A mask atom given by code (row lanes beyond the used rows)."""
    code: str
    groups: tuple


@dataclass(frozen=True)
class AnyOf:
    """`any` over group `group` of the conjunction `mask` (a reduction's presence)."""
    mask: frozenset
    group: str


@dataclass(frozen=True)
class OrOf:
    a: frozenset
    b: frozenset


TRUE = frozenset()


@dataclass
class Val:
    """A value in the kernel: code (a name or expression) over `groups`."""

    code: str
    groups: tuple
    pres: frozenset = TRUE          # conjunction of atoms; empty: present everywhere
    fill: tuple | None = None       # (F, atoms): the value is F wherever those atoms fail
    inf: bool = False               # may hold an infinity at some lane
    loop: bool = False              # varies with the loop rank
    kind: str = "f"                 # "f": f32; "ld": an input's dtype; "i": int; "b": bool


# =============================================================================== lowering
class Lowering:
    def __init__(self, prog: Program, how: str, original: Program | None = None):
        self.prog = prog
        self.how = how
        self.original = original or prog
        self.nm = Namer()
        self.tmp = 0
        self._analyze()

    # ------------------------------------------------------------------ analysis
    def _analyze(self):
        prog = self.prog
        self.it = prog.iterative_vars[0]
        self.inputs = {d.name: d for d in prog.inputs}
        self.outputs = {d.name: d for d in prog.outputs}
        self.var_rank = {r.var: r.name for r in prog.ranks}
        einsums = list(prog.einsums)
        # ---- views: `BK[.., m1, m0] = K[.., m1*M0 + m0]`, substituted into their readers
        self.views: dict[str, N.Einsum] = {}
        rest = []
        for e in einsums:
            if (e.kind == "plain" and not e.reduced and e.filter is None
                    and isinstance(e.rhs, N.Access) and e.rhs.tensor in self.inputs
                    and e.tensor not in self.outputs and len(set(e.lhs_vars)) == len(e.lhs_vars)):
                self.views[e.tensor] = e
            else:
                rest.append(e)
        self.stmts = [self._inline(e) for e in rest]
        # ---- phases
        self.init, self.body, self.pro, self.epi = [], [], [], []
        body_tensors: set[str] = set()
        for e in self.stmts:
            if e.kind == "init":
                self.init.append(e)
            elif e.kind == "recur" or self.it in e.space:
                self.body.append(e)
                body_tensors.add(e.tensor)
            else:
                reads = {a.tensor for a in _accesses(e)}
                if reads & body_tensors or self._reads_final(e):
                    self.epi.append(e)
                else:
                    if self.body:
                        # a statement between loop statements that the loop does not need
                        self.pro.append(e)
                    else:
                        self.pro.append(e)
        self.body_tensors = body_tensors
        self.recur = {e.tensor for e in self.body if e.kind == "recur"}
        for e in self.epi:
            for a in _accesses(e):
                info = prog.tensors[a.tensor]
                if a.tensor in body_tensors and info.iter_axis is None:
                    _fail(f"`{print_einsum(e)}` reads '{a.tensor}', a tensor of every "
                          "iteration, after the loop", prog, e.span)
        for o in prog.outputs:
            if o.name in body_tensors:
                _fail(f"output '{o.name}' is defined inside the loop over {self.it}", prog)
        # ---- roles of the rank variables
        all_vars: list[str] = []
        for e in self.stmts:
            for v in tuple(e.space) + e.lhs_vars:
                if v not in all_vars:
                    all_vars.append(v)
        for o in prog.outputs:
            for v in o.indices:
                if v not in all_vars:
                    all_vars.append(v)
        reduced = {v for e in self.stmts for r in e.reduced for v in r.vars}
        loop_reads = []  # input accesses inside the loop that depend on the loop rank
        tile_vars: list[str] = []
        for e in self.body:
            for a in _accesses(e):
                if a.tensor in self.inputs:
                    vs = set().union(*[N.value_vars(i) for i in a.indices]) if a.indices else set()
                    if self.it in vs:
                        loop_reads.append(a)
                        for ix in a.indices:
                            ivs = N.value_vars(ix)
                            if self.it in ivs:
                                tile_vars += [v for v in ivs if v != self.it and v not in tile_vars]
            if e.filter is not None:
                pass
        if len(tile_vars) > 1:
            _fail(f"more than one tile rank under the loop ({', '.join(tile_vars)})", prog)
        self.cvar = tile_vars[0] if tile_vars else None
        kv_vars = None
        for a in loop_reads:
            vs = set().union(*[N.value_vars(i) for i in a.indices])
            kv_vars = vs if kv_vars is None else kv_vars & vs
        kv_any = set().union(*[set().union(*[N.value_vars(i) for i in a.indices])
                               for a in loop_reads]) if loop_reads else set()
        kv_vars = kv_vars or set()
        self.group: dict[str, str | None] = {}
        self.grid_vars: list[str] = []
        self.row_vars: list[str] = []
        evars, fvars = [], []
        out_vars = [v for o in prog.outputs for v in o.indices]
        for v in all_vars:
            if v == self.it:
                self.group[v] = None
            elif v == self.cvar:
                self.group[v] = "C"
            elif v in kv_vars and v not in reduced:
                self.group[v] = None
                self.grid_vars.append(v)
            elif v in reduced:
                self.group[v] = "E"
                evars.append(v)
            elif v in kv_any:
                self.group[v] = "F"
                fvars.append(v)
            else:
                self.group[v] = "R"
                self.row_vars.append(v)
        if len(evars) > 1:
            _fail(f"more than one contracted rank ({', '.join(evars)}); one is supported", prog)
        if len(fvars) > 1:
            _fail(f"more than one value rank ({', '.join(fvars)}); one is supported", prog)
        self.evar = evars[0] if evars else None
        self.fvar = fvars[0] if fvars else None
        # the primary row var: tiled by the leftover rows; prefer one in a filter, then the
        # last of the output's indices, with a symbolic extent
        filt_vars = {v for e in self.body if e.filter is not None for v in N.value_vars(e.filter)}
        cands = [v for v in self.row_vars]
        order = {v: k for k, v in enumerate(out_vars)}
        cands.sort(key=lambda v: (v in filt_vars, self._symbolic(v), order.get(v, -1)))
        self.primary = cands[-1] if cands else None
        self.secondary = [v for v in self.row_vars if v != self.primary]
        if not self.row_vars:
            _fail("no parallel (query-like) rank to tile the rows of a program by: every rank "
                  "of the outputs is a key-side rank; not supported", prog)
        # constant-extent rows (decode: P = 1) need padding to 16 rows for tl.dot
        self.row_const = None
        if not self._symbolic(self.primary):
            self.row_const = self._const_extent(self.primary)

    def _inline(self, e: N.Einsum) -> N.Einsum:
        import dataclasses

        def sub(x):
            if isinstance(x, N.Access) and x.tensor in self.views:
                v = self.views[x.tensor]
                mapping = {lv: ix for lv, ix in zip(v.lhs_vars, x.indices)}
                inner = _substitute(v.rhs, mapping)
                return N.Access(inner.tensor, tuple(sub(i) for i in inner.indices), x.span)
            if isinstance(x, N.Access):
                return N.Access(x.tensor, tuple(sub(i) for i in x.indices), x.span)
            if isinstance(x, N.BinOp):
                return N.BinOp(x.op, sub(x.left), sub(x.right), x.span)
            if isinstance(x, N.Unary):
                return N.Unary(x.op, sub(x.operand), x.span)
            if isinstance(x, N.Call):
                return N.Call(x.fn, tuple(sub(a) for a in x.args), x.span)
            return x
        return dataclasses.replace(e, rhs=sub(e.rhs),
                                   filter=None if e.filter is None else sub(e.filter))

    def _reads_final(self, e: N.Einsum) -> bool:
        for a in _accesses(e):
            info = self.prog.tensors[a.tensor]
            if info.iter_axis is not None and isinstance(a.indices[info.iter_axis], N.Extent):
                return True
        return False

    def _symbolic(self, v: str) -> bool:
        return self._const_extent(v) is None

    def _const_extent(self, v: str):
        return const_extent(self.prog, self.var_rank[v])

    # ------------------------------------------------------------------ helpers
    def new(self, base="x") -> str:
        self.tmp += 1
        return f"{base}{self.tmp}"

    def ext(self, rank: str) -> str:
        """Code of a rank's extent inside the kernel."""
        c = self._const_rank(rank)
        if c is not None:
            return str(c)
        self.used_extents.add(rank)
        return self.nm("extent", rank)

    def _const_rank(self, rank: str):
        return const_extent(self.prog, rank)

    def param(self, name: str) -> str:
        self.used_params.add(name)
        return self.nm("param", name)

    def var_code(self, v: str) -> Val:
        g = self.group[v]
        if v == self.it:
            return Val(self.nm("var", v), (), kind="i", loop=True)
        return Val(self.nm("var", v), (g,) if g else (), kind="i", loop=v in self.loop_vars)

    @property
    def loop_vars(self) -> set:
        """Variables whose coordinates change from one loop step to the next."""
        return {self.it} | ({self.cvar} if getattr(self, "sub", None) else set())

    def block(self, v: str) -> str:
        return self.nm("block", v)

    # ------------------------------------------------------------------ sympy / affine
    def to_sym(self, x: N.Expr):
        if isinstance(x, N.Num):
            if not math.isfinite(x.value):
                raise _NotAffine
            return sympy.Integer(int(x.value)) if x.value == int(x.value) else sympy.Rational(
                str(x.value))
        if isinstance(x, N.Var):
            return sympy.Symbol("v:" + x.name, integer=True)
        if isinstance(x, N.Extent):
            c = self._const_rank(x.name)
            if c is not None:
                return sympy.Integer(c)
            return sympy.Symbol("n:" + x.name, integer=True, positive=True)
        if isinstance(x, N.Param):
            decl = next(p for p in self.prog.params if p.name == x.name)
            if decl.value is not None:
                return self.to_sym(decl.value)
            return sympy.Symbol("a:" + x.name, integer=True)
        if isinstance(x, N.Unary) and x.op == "-":
            return -self.to_sym(x.operand)
        if isinstance(x, N.BinOp) and x.op in ("+", "-", "*"):
            a, b = self.to_sym(x.left), self.to_sym(x.right)
            return a + b if x.op == "+" else a - b if x.op == "-" else a * b
        if isinstance(x, N.BinOp) and x.op == "/":
            a, b = self.to_sym(x.left), self.to_sym(x.right)
            if b.free_symbols:
                raise _NotAffine
            return a / b
        if isinstance(x, N.Call) and x.fn == "sqrt":
            a = self.to_sym(x.args[0])
            return sympy.sqrt(a)
        raise _NotAffine

    def affine(self, x: N.Expr):
        """({var: sympy coefficient}, sympy constant) of an affine expression, or None."""
        try:
            s = sympy.expand(self.to_sym(x))
        except _NotAffine:
            return None
        vs = sorted((v for v in s.free_symbols if v.name.startswith("v:")), key=lambda v: v.name)
        try:
            poly = sympy.Poly(s, *vs) if vs else None
        except sympy.PolynomialError:
            return None
        if poly is not None and poly.total_degree() > 1:
            return None
        coeffs = {}
        const = s
        for v in vs:
            c = sympy.expand(s.coeff(v))
            if any(w.name.startswith("v:") for w in c.free_symbols):
                return None
            coeffs[v.name[2:]] = c
            const = const - c * v
        const = sympy.expand(const)
        return coeffs, const

    def sym_code(self, s) -> str:
        """Integer code of a sympy expression of extents and params."""
        s = sympy.expand(s)
        if s.is_Integer:
            return str(int(s))
        if s.is_Symbol:
            kind, _, name = s.name.partition(":")
            if kind == "n":
                return self.ext(name)
            if kind == "a":
                self.int_params.add(name)
                return self.param(name)
            if kind == "v":
                return self.var_code(name).code
            if kind == "b":
                return name
        if s.is_Add:
            terms = sorted(s.args, key=sympy.default_sort_key)
            out = self.sym_code(terms[0])
            for t in terms[1:]:
                if t.could_extract_minus_sign():
                    out += f" - {self._paren(self.sym_code(-t))}"
                else:
                    out += f" + {self._paren(self.sym_code(t))}"
            return f"({out})"
        if s.is_Mul:
            c, rest = s.as_coeff_Mul()
            if c == -1:
                return f"(-{self._paren(self.sym_code(rest))})"
            if not c.is_Integer:
                raise _NotAffine
            parts = [str(int(c))] if c != 1 else []
            for f in sorted(rest.args if rest.is_Mul else (rest,), key=sympy.default_sort_key):
                parts.append(self._paren(self.sym_code(f)))
            return "(" + " * ".join(parts) + ")"
        if s.is_Pow and s.exp.is_Integer and s.exp > 0:
            b = self._paren(self.sym_code(s.base))
            return "(" + " * ".join([b] * int(s.exp)) + ")"
        raise _NotAffine

    @staticmethod
    def _paren(c: str) -> str:
        return c if c.isidentifier() or c.lstrip("-").isdigit() or c.startswith("(") else f"({c})"

    # ------------------------------------------------------------------ atoms
    def atom_groups(self, a) -> tuple:
        if isinstance(a, Raw):
            return a.groups
        if isinstance(a, AnyOf):
            gs = set()
            for b in a.mask:
                gs |= set(self.atom_groups(b))
            gs.discard(a.group)
            return _canon(gs)
        if isinstance(a, OrOf):
            gs = set()
            for b in a.a | a.b:
                gs |= set(self.atom_groups(b))
            return _canon(gs)
        return _canon({self.group[v] for v in N.value_vars(a) if self.group.get(v)})

    def atom_loop(self, a) -> bool:
        if isinstance(a, Raw):
            return False
        if isinstance(a, AnyOf):
            return any(self.atom_loop(b) for b in a.mask)
        if isinstance(a, OrOf):
            return any(self.atom_loop(b) for b in a.a | a.b)
        return bool(self.loop_vars & N.value_vars(a))

    def is_tile_atom(self, a) -> bool:
        """Atoms that the full-tile analysis decides (they vary with the loop or tile)."""
        if isinstance(a, (Raw, OrOf)):
            return False
        if isinstance(a, AnyOf):
            return False
        vs = N.value_vars(a)
        return self.it in vs or (self.cvar is not None and self.cvar in vs)

    def validity(self, v: str) -> frozenset:
        """Atoms that the padded lanes of variable v fail, where that matters for the
        values: along groups that are reduced (C, E). Rows (R) and value lanes (F) are
        never reduced, so their padded lanes only need masking at loads and stores
        (`lanes`)."""
        g = self.group.get(v)
        if g is None or g in ("R", "F"):
            return TRUE
        return self.lanes(v)

    def lanes(self, v: str) -> frozenset:
        """Atoms that the padded lanes of variable v fail (memory safety)."""
        g = self.group.get(v)
        if g is None:
            return TRUE
        if g == "R":
            out = set()
            if self.row_pad:
                out.add(Raw(self.row_pad, ("R",)))
            if not (v == self.primary and self.row_const == 1):
                out.add(N.BinOp("<", N.Var(v), N.Extent(self.var_rank[v])))
            return frozenset(out)
        ext = self._const_rank(self.var_rank[v])
        if g == "C" and self.sub:
            sub, nsub = self.sub
            return TRUE if sub * nsub == ext else frozenset(
                {N.BinOp("<", N.Var(v), N.Extent(self.var_rank[v]))})
        if ext is not None and ext >= 16 and ext & (ext - 1) == 0:
            return TRUE  # the block is exactly the extent
        return frozenset({N.BinOp("<", N.Var(v), N.Extent(self.var_rank[v]))})

    def bounds(self, a: N.Access) -> tuple[frozenset, frozenset]:
        """(presence atoms, lane-safety atoms) of an input read: a point past the extent
        is absent; padded row/value lanes only must not be read."""
        d = self.inputs[a.tensor]
        out, safe = set(), set()
        for k, ix in enumerate(a.indices):
            rank = self.var_rank[d.indices[k]]
            for v in N.value_vars(ix):
                out |= self.validity(v)
                safe |= self.lanes(v)
            if isinstance(ix, N.Var) and self.var_rank.get(ix.name) == rank:
                continue  # within the rank by construction
            aff = self.affine(ix)
            nonneg = aff is not None and all(c.is_nonnegative for c in aff[0].values()) \
                and aff[1].is_nonnegative
            if not nonneg:
                out.add(N.BinOp(">=", ix, N.Num(0.0)))
            if self._exact_tiling(ix, rank):
                continue
            out.add(N.BinOp("<", ix, N.Extent(rank)))
        out = frozenset(out)
        return out, frozenset(safe) - out

    def _exact_tiling(self, ix: N.Expr, rank: str) -> bool:
        """`m1*M0 + m0` with `M1 = M / M0` (exact): never past M."""
        aff = self.affine(ix)
        if aff is None or aff[1] != 0:
            return False
        coeffs, _ = aff
        hi = 0
        for v, c in coeffs.items():
            r = self.prog.rank(self.var_rank[v])
            n = sympy.Symbol("n:" + r.name, integer=True, positive=True)
            if r.extent is not None:
                try:
                    n = self.to_sym(r.extent)
                except _NotAffine:
                    return False
            hi = hi + c * (n - 1)
        total = sympy.Symbol("n:" + rank, integer=True, positive=True)
        rd = self.prog.rank(rank)
        if rd.extent is not None:
            try:
                total = self.to_sym(rd.extent)
            except _NotAffine:
                return False
        return sympy.simplify(hi - (total - 1)) == 0

    # ------------------------------------------------------------------ mask codegen
    def atom_code(self, a, sc) -> str:
        key = ("atom", a)
        hit = sc.lookup(key)
        if hit is not None:
            return hit
        target = sc if self.atom_loop(a) else sc.root
        if isinstance(a, Raw):
            code = a.code
        elif isinstance(a, AnyOf):
            g = a.group
            inner_groups = _canon(set().union(*[set(self.atom_groups(b)) for b in a.mask]))
            m = self.mask_code(a.mask, inner_groups, target)
            axis = inner_groups.index(g)
            code = f"tl.reduce({m}.to(tl.int32), {axis}, _ein_max) > 0"
        elif isinstance(a, OrOf):
            gs = self.atom_groups(a)
            code = f"({self.mask_code(a.a, gs, target)}) | ({self.mask_code(a.b, gs, target)})"
        else:
            code = self.pred_code(a, target)
        name = self.new("mask")
        target.emit(f"{name} = {code}")
        target.put(key, name)
        return name

    def mask_code(self, atoms: frozenset, frame: tuple, sc) -> str:
        parts = []
        for a in sorted(atoms, key=_atom_key):
            c = self.atom_code(a, sc)
            parts.append(_bcast(c, self.atom_groups(a), frame))
        return " & ".join(parts) if parts else "True"

    def pred_code(self, x, sc) -> str:
        """Boolean code of a predicate (over its own groups)."""
        if isinstance(x, N.BinOp) and x.op in ("and", "or"):
            gs = _canon(set(self.atom_groups(x)))
            a = _bcast(self.pred_code(x.left, sc), self.atom_groups(x.left), gs)
            b = _bcast(self.pred_code(x.right, sc), self.atom_groups(x.right), gs)
            return f"({a}) {'&' if x.op == 'and' else '|'} ({b})"
        if isinstance(x, N.Unary) and x.op == "not":
            return f"~({self.pred_code(x.operand, sc)})"
        if isinstance(x, N.BinOp) and x.op in N.CMP_OPS:
            gs = _canon(set(self.atom_groups(x)))
            a = self.int_code(x.left, gs, sc)
            b = self.int_code(x.right, gs, sc)
            return f"{a} {x.op} {b}"
        _fail(f"unsupported predicate `{print_expr(x)}`", self.prog)

    def int_code(self, x: N.Expr, frame: tuple, sc) -> str:
        """Integer (or real, for real params) code of an index/predicate expression."""
        if isinstance(x, N.Num):
            return str(int(x.value)) if math.isfinite(x.value) and x.value == int(x.value) \
                else repr(float(x.value))
        if isinstance(x, N.Var):
            v = self.var_code(x.name)
            return _bcast(v.code, v.groups, frame)
        if isinstance(x, N.Extent):
            return self.ext(x.name)
        if isinstance(x, N.Param):
            return self.param(x.name)
        if isinstance(x, N.Unary) and x.op == "-":
            return f"(-{self.int_code(x.operand, frame, sc)})"
        if isinstance(x, N.BinOp) and x.op in ("+", "-", "*"):
            return f"({self.int_code(x.left, frame, sc)} {x.op} {self.int_code(x.right, frame, sc)})"
        if isinstance(x, N.BinOp) and x.op in ("//", "%"):
            fn = "_ein_fdiv" if x.op == "//" else "_ein_fmod"
            return f"{fn}({self.int_code(x.left, frame, sc)}, {self.int_code(x.right, frame, sc)})"
        _fail(f"unsupported index or predicate expression `{print_expr(x)}`", self.prog)

    # ------------------------------------------------------------------ values
    def const_val(self, code: str, inf=False) -> Val:
        return Val(code, (), inf=inf)

    def as_f32(self, v: Val, sc) -> str:
        if v.kind == "f":
            return v.code
        if v.kind == "i":
            return f"({v.code} * 1.0)"
        key = ("f32", v.code)
        hit = sc.lookup(key)
        if hit is not None:
            return hit
        target = sc if v.loop else sc.root
        name = self.new("f")
        target.emit(f"{name} = {v.code}.to(tl.float32)")
        target.put(key, name)
        return name

    def filled(self, v: Val, fill: float, atoms: frozenset, frame: tuple, sc) -> str:
        """Code of v over `frame` whose lanes failing `atoms` read `fill`."""
        code = _bcast(self.as_f32(v, sc) if v.kind != "ld" or fill != 0.0 else v.code,
                      v.groups, frame)
        if not atoms:
            return code
        if v.fill is not None and _same_num(v.fill[0], fill):
            atoms = atoms - v.fill[1]  # those lanes read `fill` already
            if not atoms:
                return code
        key = ("fill", v.code, fill, atoms, frame)
        hit = sc.lookup(key)
        if hit is not None:
            return hit
        loop = v.loop or any(self.atom_loop(a) for a in atoms)
        target = sc if loop else sc.root
        m = self.mask_code(atoms, frame, target)
        name = self.new("w")
        target.emit(f"{name} = tl.where({m}, {code}, {_num(fill)})")
        target.put(key, name)
        return name

    def ev(self, x: N.Expr, frame: tuple, sc) -> Val:
        """A value expression over the statement's frame."""
        if isinstance(x, N.Num):
            return self.const_val(_num(x.value), inf=not math.isfinite(x.value))
        if isinstance(x, N.Var):
            v = self.var_code(x.name)
            pres = self.validity(x.name)
            if sc.unmasked:
                pres = frozenset(a for a in pres if not self.is_tile_atom(a))
            return Val(f"({v.code} * 1.0)", v.groups, loop=v.loop, pres=pres)
        if isinstance(x, N.Extent):
            return self.const_val(f"({self.ext(x.name)} * 1.0)")
        if isinstance(x, N.Param):
            return self.const_val(f"({self.param(x.name)} * 1.0)")
        if isinstance(x, N.Access):
            return self.read(x, sc)
        if isinstance(x, N.Unary) and x.op == "-":
            a = self.ev(x.operand, frame, sc)
            return Val(f"(-{self.as_f32(a, sc)})", a.groups, a.pres,
                       None if a.fill is None else (-a.fill[0], a.fill[1]), a.inf, a.loop)
        if isinstance(x, N.BinOp) and x.op in ("+", "-", "*", "/"):
            a = self.ev(x.left, frame, sc)
            b = self.ev(x.right, frame, sc)
            return self.binop(x.op, a, b, sc)
        if isinstance(x, N.Call):
            args = [self.ev(y, frame, sc) for y in x.args]
            if x.fn in ("max", "min"):
                return self.union("tl.maximum" if x.fn == "max" else "tl.minimum",
                                  -math.inf if x.fn == "max" else math.inf, args[0], args[1], sc)
            a = args[0]
            fn = {"exp": "tl.exp", "log": "tl.log", "sqrt": "tl.sqrt", "abs": "tl.abs",
                  "tanh": "_ein_tanh", "sigmoid": "_ein_sigmoid"}[x.fn]
            fill = None
            if a.fill is not None:
                f = _eval_fn(x.fn, a.fill[0])
                fill = None if f is None else (f, a.fill[1])
            inf = {"exp": True, "log": True, "sqrt": a.inf, "abs": a.inf,
                   "tanh": False, "sigmoid": False}[x.fn]
            return Val(f"{fn}({self.as_f32(a, sc)})", a.groups, a.pres, fill, inf, a.loop)
        _fail(f"unsupported expression `{print_expr(x)}`", self.prog)

    def binop(self, op: str, a: Val, b: Val, sc) -> Val:
        groups = _canon(set(a.groups) | set(b.groups))
        loop = a.loop or b.loop
        if op == "+":
            return self.union(None, 0.0, a, b, sc)
        ca = _bcast(self.as_f32(a, sc), a.groups, groups)
        cb = _bcast(self.as_f32(b, sc), b.groups, groups)
        pres = a.pres | b.pres
        fill = None
        if op == "-":
            code = f"_ein_sub({ca}, {cb})" if (a.inf and b.inf) else f"({ca} - {cb})"
            if a.fill is not None and a.fill[0] == -math.inf and not b.pres:
                fill = (-math.inf, a.fill[1])
            return Val(code, groups, pres, fill, a.inf or b.inf, loop)
        if op == "*":
            if a.fill is not None and a.fill[0] == 0.0 and not b.pres and not b.inf:
                fill = (0.0, a.fill[1])
            elif b.fill is not None and b.fill[0] == 0.0 and not a.pres and not a.inf:
                fill = (0.0, b.fill[1])
            return Val(f"({ca} * {cb})", groups, pres, fill, a.inf or b.inf, loop)
        # division: x / 0 = 0 (rule 4)
        if a.fill is not None and a.fill[0] == 0.0 and not b.pres:
            fill = (0.0, a.fill[1])
        if not b.groups and _is_nonzero_literal(b.code):
            return Val(f"({ca} / {cb})", groups, pres, fill, a.inf, loop)
        return Val(f"_ein_div({ca}, {cb})", groups, pres, fill, a.inf, loop)

    def union(self, fn, ident: float, a: Val, b: Val, sc) -> Val:
        """`+`, `max`, `min`: an absent operand is ignored (rule 3)."""
        groups = _canon(set(a.groups) | set(b.groups))
        if a.pres and b.pres:
            pres = frozenset({OrOf(a.pres, b.pres)})
        else:
            pres = TRUE
        ca = self.filled(a, ident, a.pres, groups, sc) if a.pres else \
            _bcast(self.as_f32(a, sc), a.groups, groups)
        cb = self.filled(b, ident, b.pres, groups, sc) if b.pres else \
            _bcast(self.as_f32(b, sc), b.groups, groups)
        code = f"({ca} + {cb})" if fn is None else f"{fn}({ca}, {cb})"
        fill = (ident, pres) if pres else None
        return Val(code, groups, pres, fill, a.inf or b.inf, a.loop or b.loop)

    def read(self, a: N.Access, sc) -> Val:
        info = self.prog.tensors[a.tensor]
        if a.tensor in self.inputs:
            return self.load(a, None, sc)
        # a computed tensor, read at the coordinates it was defined at
        k = info.iter_axis
        slot = "plain"
        for j, ix in enumerate(a.indices):
            if j == k:
                if isinstance(ix, N.Var) and ix.name == self.it:
                    slot = "prev"
                elif isinstance(ix, N.Extent):
                    slot = "final"
                elif isinstance(ix, N.Num):
                    slot = "initial"
                else:
                    slot = "next"
                continue
            if not isinstance(ix, N.Var) or self.group.get(ix.name) != self.group.get(info.axes[j]) \
                    or (self.group.get(ix.name) is None and ix.name != info.axes[j]):
                _fail(f"'{a.tensor}' is read at `{print_expr(a)}`; a computed tensor must be "
                      "read at the coordinates it is defined at", self.prog, a.span)
        if slot == "initial":
            _fail(f"reading the initial iterate `{print_expr(a)}` is not supported", self.prog,
                  a.span)
        v = sc.tensor(a.tensor, slot)
        if v is None:
            _fail(f"'{a.tensor}' is read before it is computed in the kernel", self.prog, a.span)
        return v

    def load(self, a: N.Access, order: tuple | None, sc) -> Val:
        gs = set()
        loop = False
        for ix in a.indices:
            for v in N.value_vars(ix):
                if self.group.get(v):
                    gs.add(self.group[v])
                if v in self.loop_vars:
                    loop = True
        groups = _canon(gs)
        if order is None:
            order = groups
        if set(order) != set(groups):
            _fail(f"internal: load orientation {order} for {groups}", self.prog)
        key = ("load", a, order)
        hit = sc.lookup(key)
        if hit is not None:
            return hit
        target = sc if loop else sc.root
        pres, safe = self.bounds(a)
        if sc.unmasked:
            pres = frozenset(x for x in pres if not self.is_tile_atom(x))
        scalar_terms, vec_terms = [], []
        for k, ix in enumerate(a.indices):
            stride = self.nm("stride", f"{a.tensor}_{k}")
            aff = self.affine(ix)
            if aff is None:
                _fail(f"index `{print_expr(ix)}` of '{a.tensor}' is not affine", self.prog, a.span)
            coeffs, const = aff
            scal = const
            per_group: dict[str, list] = {}
            for v, c in coeffs.items():
                g = self.group.get(v)
                if g is None:
                    scal = scal + c * sympy.Symbol("v:" + v, integer=True)
                else:
                    per_group.setdefault(g, []).append((v, c))
            if scal != 0:
                scalar_terms.append(f"tl.cast({self.sym_code(scal)}, tl.int64) * {stride}")
            for g, terms in per_group.items():
                s = sum((c * sympy.Symbol("v:" + v, integer=True) for v, c in terms),
                        sympy.Integer(0))
                code = self.sym_code(s)
                vec_terms.append((g, f"{code} * {stride}"))
        ptr = self.nm("input", a.tensor)
        base = ptr
        if scalar_terms:
            bkey = ("base", a.tensor, tuple(scalar_terms))
            bname = target.lookup(bkey)
            if bname is None:
                bname = self.new("base")
                target.emit(f"{bname} = {ptr} + " + " + ".join(scalar_terms))
                target.put(bkey, bname)
            base = bname
        offs = " + ".join(_bcast(f"({c})", (g,), order) for g, c in vec_terms)
        pcode = f"{base} + {offs}" if offs else base
        name = self.nm("load", a.tensor)
        name = self.new(name + "_")
        # the mask is materialized in the orientation of this load
        m = self.mask_code(pres | safe, order, target) if (pres | safe) else None
        if m:
            target.emit(f"{name} = tl.load({pcode}, mask={m}, other=0.0)")
        else:
            target.emit(f"{name} = tl.load({pcode})")
        val = Val(name, order, pres, (0.0, pres) if pres else None, False, loop, kind="ld")
        target.put(key, val)
        return val

    # ------------------------------------------------------------------ statements
    def frame_of(self, e: N.Einsum) -> tuple:
        return _canon({self.group[v] for v in e.space if self.group.get(v)})

    def statement(self, e: N.Einsum, sc) -> Val:
        reds = list(e.reduced)
        red_groups = []
        for r in reds:
            gs = set()
            for v in r.vars:
                g = self.group.get(v)
                if g is None:
                    _fail(f"`{print_einsum(e)}` reduces {v}, a rank of the launch grid or the "
                          "loop; not supported", self.prog, e.span)
                gs.add(g)
            if len(gs) != 1:
                _fail(f"`{print_einsum(e)}` reduces several groups at once", self.prog, e.span)
            red_groups.append((r.op, gs.pop()))
        frame = self.frame_of(e)
        filt = TRUE
        if e.filter is not None:
            filt = frozenset(_conjuncts(e.filter))
            if sc.unmasked:
                filt = frozenset(x for x in filt if not self.is_tile_atom(x))
        val = None
        if red_groups and red_groups[0][0] == "sum":
            val = self.try_dot(e, red_groups[0][1], filt, sc)
            if val is not None:
                red_groups = red_groups[1:]
        if val is None:
            if len(frame) > 2:
                _fail(f"`{print_einsum(e)}` needs a {len(frame)}-D block (groups "
                      f"{', '.join(frame)}); only 2-D blocks and dot products are generated",
                      self.prog, e.span)
            val = self.ev(e.rhs, frame, sc)
            val = Val(val.code, val.groups, val.pres | filt, val.fill, val.inf,
                      val.loop or any(self.atom_loop(x) for x in filt), val.kind)
        for op, g in red_groups:
            val = self.reduce(val, op, g, sc)
        return val

    def reduce(self, v: Val, op: str, g: str, sc) -> Val:
        if g not in v.groups:
            if op in ("max", "min"):
                return v
            _fail(f"a {op}-reduction of a value that does not vary along the reduced rank",
                  self.prog)
        ident = {"sum": 0.0, "max": -math.inf, "min": math.inf, "prod": 1.0}[op]
        pres = v.pres | self._group_validity(g)
        if sc.unmasked:
            pres = frozenset(x for x in pres if not self.is_tile_atom(x))
        xat = frozenset(a for a in pres if g in self.atom_groups(a))
        rest = pres - xat
        code = self.filled(Val(v.code, v.groups, pres, v.fill, v.inf, v.loop, v.kind),
                           ident, xat, v.groups, sc)
        axis = v.groups.index(g)
        comb = {"sum": "_ein_sum", "max": "_ein_max", "min": "_ein_min", "prod": "_ein_prod"}[op]
        groups = tuple(x for x in v.groups if x != g)
        live = frozenset(a for a in xat if not self._pure_validity(a, g))
        pres_out = rest | ({AnyOf(xat, g)} if live else set())
        inf = v.inf or (op in ("max", "min") and bool(live))
        fill = (ident, frozenset({AnyOf(xat, g)})) if live else None
        return Val(f"tl.reduce({code}, {axis}, {comb})", groups, frozenset(pres_out), fill, inf,
                   v.loop)

    def _group_validity(self, g: str) -> frozenset:
        out = set()
        for v, gg in self.group.items():
            if gg == g:
                out |= self.validity(v)
        return frozenset(out)

    def _pure_validity(self, a, g) -> bool:
        """An atom `x < X` of a variable of group g: `any` of it over g is true."""
        if isinstance(a, N.BinOp) and a.op == "<" and isinstance(a.left, N.Var) and \
                isinstance(a.right, N.Extent) and self.group.get(a.left.name) == g and \
                self.var_rank.get(a.left.name) == a.right.name:
            return True
        return isinstance(a, Raw) and g == "R"

    def try_dot(self, e: N.Einsum, g: str, filt: frozenset, sc) -> Val | None:
        factors, const = _factorize(e.rhs)
        blocks, scalars = [], []
        for node, recip in factors:
            gs = _canon({self.group[v] for v in N.value_vars(node) if self.group.get(v)}
                        | self._tensor_groups(node))
            if gs:
                if recip:
                    return None
                blocks.append((node, gs))
            else:
                scalars.append((node, recip))
        if len(blocks) != 2:
            return None
        (na, ga), (nb, gb) = blocks
        if g not in ga or g not in gb or len(ga) != 2 or len(gb) != 2 or set(ga) == set(gb):
            return None
        if any(g in self.atom_groups(x) for x in filt):
            return None  # a filter along the contracted group: elementwise path
        ya = next(x for x in ga if x != g)
        zb = next(x for x in gb if x != g)
        out = _canon({ya, zb})
        if out[0] != ya:
            (na, ga, ya), (nb, gb, zb) = (nb, gb, zb), (na, ga, ya)
        opa = self.operand(na, (ya, g), g, sc)
        opb = self.operand(nb, (g, zb), g, sc)
        a_val, a_code = opa
        b_val, b_code = opb
        loop = a_val.loop or b_val.loop
        target = sc if loop else sc.root
        name = self.new("dot")
        target.emit(f"{name} = _ein_dot({a_code}, {b_code}, PREC, UPCAST)")
        # presence: atoms not along g stay; `any` over g of the others
        allp = a_val.pres | b_val.pres
        xat = frozenset(x for x in allp if g in self.atom_groups(x))
        live = frozenset(x for x in xat if not self._pure_validity(x, g))
        pres = (allp - xat) | ({AnyOf(xat, g)} if live else set()) | filt
        code = name
        c = const
        mult = []
        for node, recip in scalars:
            v = self.ev(node, (), sc)
            s = self.as_f32(v, sc)
            mult.append(f" / {s}" if recip else f" * {s}")
            loop = loop or v.loop
        if c != 1.0:
            mult.insert(0, f" * {_num(c)}")
        if mult:
            code = f"({name}{''.join(mult)})"
        fill = (0.0, frozenset({AnyOf(xat, g)})) if live else None
        return Val(code, out, frozenset(pres), fill, False,
                   loop or any(self.atom_loop(x) for x in filt))

    def _tensor_groups(self, node) -> set:
        gs = set()
        for a in N.walk(node):
            if isinstance(a, N.Access) and a.tensor not in self.inputs:
                info = self.prog.tensors[a.tensor]
                for j, v in enumerate(info.axes):
                    if j != info.iter_axis and self.group.get(v):
                        gs.add(self.group[v])
        return gs

    def operand(self, node, order: tuple, g: str, sc):
        """A dot operand in orientation `order`, its absent lanes along g reading 0."""
        if isinstance(node, N.Access) and node.tensor in self.inputs:
            v = self.load(node, order, sc)
            xat = frozenset(x for x in v.pres if g in self.atom_groups(x))
            return v, self.filled(v, 0.0, xat, order, sc) if xat else v.code
        v = self.ev(node, _canon(set(order)), sc)
        xat = frozenset(x for x in v.pres if g in self.atom_groups(x))
        code = self.filled(v, 0.0, xat, v.groups, sc) if xat else (
            v.code if v.kind == "ld" else self.as_f32(v, sc))
        if v.groups != order:
            code = f"tl.trans({code})"
        return v, code

    # ------------------------------------------------------------------ the kernel
    def build(self, max_tile: int = 64, mode: str = "main") -> "KernelSource":
        """The kernel's source. `mode`: "main", the one-program-per-row-tile kernel;
        "split" (split-K, only when `split_k()` is None), the same loop over one of
        NSPLIT contiguous ranges of its tiles (launch axis 2), storing the partial running
        state to f32 scratch; "merge", the associative online-softmax merge of the
        NSPLIT partial states followed by the epilogue."""
        self.mode = mode
        self.tmp = 0
        self.sub = None
        if self.cvar is not None:
            m0 = self._const_rank(self.var_rank[self.cvar])
            if m0 is not None and m0 > max_tile and self.splittable() is None:
                self.sub = (max_tile, -(-m0 // max_tile))
        self.used_extents: set[str] = set()
        self.used_params: set[str] = set()
        self.int_params: set[str] = set()
        prog = self.prog
        # rows: layout of the row block
        self.row_pad = None
        root = Scope(None, unmasked=False)
        # ---- program ids -> grid coordinates
        em = root.emit
        n_tiles = []
        row_vars = self.secondary + [self.primary]
        # rows of a program: secondary vars major, primary minor
        em("r = tl.arange(0, BLOCK_R)")
        if self.row_const is not None:
            blk = _npow2(self.row_const)
            self.row_blocks = {self.primary: str(blk)}
        else:
            self.row_blocks = {self.primary: self.block(self.primary)}
        for v in self.secondary:
            self.row_blocks[v] = self.block(v)
        used_rows = " * ".join(self.row_blocks[v] for v in row_vars)
        if self.row_const is not None:
            self.row_pad = f"r < {used_rows}"
        em("pid_rows = tl.program_id(0)")
        em("pid_grid = tl.program_id(1)")
        if mode == "split":
            em("pid_split = tl.program_id(2)")
        # row tiles: mixed radix over row vars (primary fastest)
        rest = "pid_rows"
        for v in reversed(row_vars):
            ext = self.ext(self.var_rank[v])
            blk = self.row_blocks[v]
            tname = f"tile_{self.nm('var', v)}"
            ntiles = f"(({ext} + {blk} - 1) // {blk})"
            em(f"{tname} = {rest} % {ntiles}")
            rest_name = self.new("rest")
            em(f"{rest_name} = {rest} // {ntiles}")
            rest = rest_name
            n_tiles.append((v, ntiles))
        inner = "1"
        for v in reversed(row_vars):
            blk = self.row_blocks[v]
            tname = f"tile_{self.nm('var', v)}"
            local = "r" if inner == "1" else f"(r // ({inner}))"
            if len(row_vars) > 1 or self.row_const is not None:
                local = f"({local} % {blk})"
            em(f"{self.nm('var', v)} = {tname} * {blk} + {local}")
            em(f"lo_{self.nm('var', v)} = {tname} * {blk}")
            em(f"hi_{self.nm('var', v)} = tl.minimum({tname} * {blk} + {blk}, "
               f"{self.ext(self.var_rank[v])}) - 1")
            inner = blk if inner == "1" else f"{inner} * {blk}"
        # grid vars: row-major over their order
        rest = "pid_grid"
        for v in reversed(self.grid_vars):
            ext = self.ext(self.var_rank[v])
            em(f"{self.nm('var', v)} = {rest} % {ext}")
            if v != self.grid_vars[0]:
                rn = self.new("rest")
                em(f"{rn} = {rest} // {ext}")
                rest = rn
        for v, g in self.group.items():
            if g in ("C", "E", "F") and not (g == "C" and self.sub):
                em(f"{self.nm('var', v)} = tl.arange(0, {self.block(v)})")
        # ---- prologue statements (loop invariant); the merge computes only what the
        # epilogue reads
        pro = self.pro if mode == "main" else [] if mode == "split" else self._epi_deps()
        for e in pro:
            em(f"# {print_einsum(e)}")
            v = self.statement(e, root)
            self.store_tensor(e, v, root, root)
        # ---- initial iterates of the running tensors
        carried: dict[str, str] = {}
        if mode != "main":
            self.online = self.online_state()
        for e in self.init:
            gs = _canon({self.group[v] for v in e.lhs_vars if self.group.get(v)})
            if mode == "split":
                # a split starts empty: running max -inf, running sums 0 (the merge starts
                # from the spec's initial iterates)
                name = self.nm("carry", e.tensor)
                ident = "float('-inf')" if e.tensor == self.online[0] else "0.0"
                em(f"# {e.tensor}: this split's state starts empty")
                shape = "[" + ", ".join(self._group_block(x) for x in gs) + "]"
                em(f"{name} = tl.full({shape}, {ident}, tl.float32)")
                carried[e.tensor] = name
                root.put(("tensor", e.tensor, "prev"), Val(name, gs, TRUE, None, True, True))
                continue
            em(f"# {print_einsum(e)}")
            v = self.ev(e.rhs, gs, root)
            if v.pres:
                _fail(f"the initial iterate `{print_einsum(e)}` may be absent; not supported",
                      prog, e.span)
            name = self.nm("carry", e.tensor)
            shape = "[" + ", ".join(self._group_block(x) for x in gs) + "]"
            em(f"{name} = tl.full({shape}, 0.0, tl.float32) + "
               f"{_bcast(self.as_f32(v, root), v.groups, gs)}" if gs else
               f"{name} = tl.full([], 0.0, tl.float32) + {self.as_f32(v, root)}")
            carried[e.tensor] = name
            root.put(("tensor", e.tensor, "prev"),
                     Val(name, gs, TRUE, None, True, True))
        self.carried = carried
        missing = self.recur - set(carried)
        if missing:
            _fail(f"running tensor(s) {', '.join(sorted(missing))} have no initial iterate",
                  prog)
        # ---- the loop (the merge of the partial states, for the merge kernel)
        loop_lines = self.gen_merge(root) if mode == "merge" else self.gen_loops(root)
        if mode == "split":
            return self.assemble(root.lines + loop_lines + self.store_partials(root))
        # ---- epilogue
        epi = Scope(root, unmasked=False)
        for t, name in carried.items():
            info = prog.tensors[t]
            gs = _canon({self.group[v] for j, v in enumerate(info.axes)
                         if j != info.iter_axis and self.group.get(v)})
            epi.put(("tensor", t, "final"), Val(name, gs, TRUE, None, True, False))
        for e in self.epi:
            epi.emit(f"# {print_einsum(e)}")
            v = self.statement(e, epi)
            self.store_tensor(e, v, epi, epi)
        # outputs
        for o in prog.outputs:
            v = epi.tensor(o.name, "plain")
            if v is None:
                v = root.tensor(o.name, "plain")
            if v is None:
                _fail(f"output '{o.name}' is not computed by the kernel", prog)
            self.store_output(o, v, epi)
        body = root.lines + loop_lines + epi.lines
        return self.assemble(body)

    def _group_block(self, g: str) -> str:
        if g == "R":
            return "BLOCK_R"
        v = {"C": self.cvar, "E": self.evar, "F": self.fvar}[g]
        return self.block(v)

    def store_tensor(self, e: N.Einsum, v: Val, sc, target):
        name = self.nm("tensor", e.tensor)
        if e.kind == "recur":
            name = name + "_next"
        target.emit(f"{name} = {v.code}")
        slot = "next" if e.kind == "recur" else "plain"
        sc.put(("tensor", e.tensor, slot), Val(name, v.groups, v.pres, v.fill, v.inf, v.loop,
                                               v.kind))

    def store_output(self, o: N.TensorDecl, v: Val, sc):
        gs = _canon({self.group[x] for x in o.indices if self.group.get(x)})
        if set(v.groups) - set(gs):
            _fail(f"output '{o.name}' varies along a rank it does not have", self.prog)
        val = self.filled(v, 0.0, v.pres, v.groups, sc) if v.pres else self.as_f32(v, sc)
        val = _bcast(val, v.groups, gs)
        ptr = self.nm("output", o.name)
        scal, vec = [], []
        pres = set()
        for k, x in enumerate(o.indices):
            stride = self.nm("stride", f"{o.name}_{k}")
            g = self.group.get(x)
            if g is None:
                scal.append(f"tl.cast({self.nm('var', x)}, tl.int64) * {stride}")
            else:
                vec.append(_bcast(f"({self.nm('var', x)} * {stride})", (g,), gs))
                pres |= self.lanes(x)
        pcode = " + ".join([ptr] + scal + vec)
        m = self.mask_code(frozenset(pres), gs, sc) if pres else None
        if gs and len(gs) < len(o.indices) - len(scal) + 0:
            pass
        full = f"tl.full([{', '.join(self._group_block(g) for g in gs)}], 0.0, tl.float32) + " \
            if gs and set(v.groups) != set(gs) else ""
        sc.emit(f"# store {o.name}")
        cast = f".to({ptr}.dtype.element_ty)"
        if m:
            sc.emit(f"tl.store({pcode}, ({full}{val}){cast}, mask={m})")
        else:
            sc.emit(f"tl.store({pcode}, ({full}{val}){cast})")

    # ------------------------------------------------------------------ loops
    def tile_atoms(self) -> list:
        """Every atom the loop body can test that varies with the loop or the tile."""
        out = []
        for e in self.body:
            if e.filter is not None:
                out += [x for x in _conjuncts(e.filter) if self.is_tile_atom(x)]
            for a in _accesses(e):
                if a.tensor in self.inputs:
                    out += [x for x in self.bounds(a)[0] if self.is_tile_atom(x)]
        seen, uniq = set(), []
        for x in sorted(out, key=_atom_key):
            if x not in seen:
                seen.add(x)
                uniq.append(x)
        return uniq

    def box(self, var: str):
        """(lo, hi) of a variable over the current tile box, as sympy expressions whose
        symbols print as kernel code; None for the loop var."""
        if var == self.it:
            return None
        g = self.group.get(var)
        if g is None:
            c = sympy.Symbol("v:" + var, integer=True)
            return c, c
        if g == "R":
            return (sympy.Symbol("b:lo_" + self.nm("var", var), integer=True),
                    sympy.Symbol("b:hi_" + self.nm("var", var), integer=True))
        n = self.prog.rank(self.var_rank[var])
        ext = sympy.Symbol("n:" + n.name, integer=True, positive=True)
        c = self._const_rank(n.name)
        return sympy.Integer(0), (sympy.Integer(c) if c is not None else ext) - 1

    def range_of(self, x, want: str):
        """For an atom: ('lo'|'hi' code bounds on the loop var) of the tiles where the atom
        can be true (want='can') or is true at every point (want='full'); None if unknown."""
        if isinstance(x, N.BinOp) and x.op == "and":
            a, b = self.range_of(x.left, want), self.range_of(x.right, want)
            if a is None or b is None:
                if want == "full":
                    return None
                return a or b or (None, None)
            return (_mx(a[0], b[0]), _mn(a[1], b[1]))
        if isinstance(x, N.BinOp) and x.op == "or":
            a, b = self.range_of(x.left, want), self.range_of(x.right, want)
            if want == "full":
                return a if a is not None else b
            if a is None or b is None:
                return (None, None)
            return (_mn(a[0], b[0], none_wins=True), _mx(a[1], b[1], none_wins=True))
        if isinstance(x, N.Unary) and x.op == "not":
            return self.range_of(_negate(x.operand), want)
        if not (isinstance(x, N.BinOp) and x.op in ("<", "<=", ">", ">=")):
            return None if want == "full" else (None, None)
        d = N.BinOp("-", x.left, x.right)
        aff = self.affine(d)
        if aff is None:
            return None if want == "full" else (None, None)
        coeffs, const = aff
        if x.op in (">", ">="):
            coeffs = {v: -c for v, c in coeffs.items()}
            const = -const
        if x.op in ("<", ">"):
            const = const + 1      # d < 0  <=>  d + 1 <= 0 (integers)
        c_it = coeffs.pop(self.it, sympy.Integer(0))
        # rest = const + sum c*v over the box: min for 'can', max for 'full'
        try:
            rest = const
            for v, c in sorted(coeffs.items()):
                if c == 0:
                    continue
                lo, hi = self.box(v)
                if c.is_positive:
                    pick = lo if want == "can" else hi
                elif c.is_negative:
                    pick = hi if want == "can" else lo
                else:
                    return None if want == "full" else (None, None)
                rest = rest + c * pick
            rest = sympy.expand(rest)
            if c_it == 0:
                if rest.is_number:
                    return (None, None) if rest <= 0 else (None, "0")
                n = self.ext(self.var_rank[self.it])
                return (None, f"tl.where({self.sym_code(rest)} <= 0, {n}, 0)")
            if c_it.is_positive:      # c*m1 + rest <= 0  <=>  m1 <= floor(-rest / c)
                return (None, f"(_ein_fdiv({self.sym_code(-rest)}, {self.sym_code(c_it)}) + 1)")
            if c_it.is_negative:      # m1 >= ceil(rest / -c)
                return (f"(-_ein_fdiv({self.sym_code(-rest)}, {self.sym_code(-c_it)}))", None)
        except _NotAffine:
            pass
        return None if want == "full" else (None, None)

    def gen_loops(self, root) -> list[str]:
        out = []
        self.nm("var", self.it)  # reserves the loop variable's name
        n_it = self.ext(self.var_rank[self.it])
        atoms = self.tile_atoms()
        # padded tile lanes (M0 not a power of two >= 16) are never all valid
        c_padded = self.cvar is not None and bool(self.validity(self.cvar))
        conj = _and_all(atoms)
        can = self.range_of(conj, "can") if conj is not None else (None, None)
        full = None
        if not c_padded:
            full = self.range_of(conj, "full") if conj is not None else (None, None)
        holes = conj is not None and _has_or(conj)
        lo = "0" if can[0] is None else f"tl.maximum({can[0]}, 0)"
        hi = n_it if can[1] is None else f"tl.minimum({can[1]}, {n_it})"
        out.append(f"# the loop over {self.it}: tiles [lo, hi) can hold present points")
        mul = ""
        if self.sub:
            sub, nsub = self.sub
            mul = f" * {nsub}"
            out.append(f"# each tile of {self.cvar} ({self.var_rank[self.cvar]} = "
                       f"{self._const_rank(self.var_rank[self.cvar])}) runs as {nsub} sub-tiles of "
                       f"{sub}: the running state merges sub-tiles exactly as tiles")
        out.append(f"loop_lo = ({lo}){mul}")
        out.append(f"loop_hi = tl.maximum(({hi}){mul}, loop_lo)")
        if self.mode == "split":
            out.append("# split-K: this program runs split pid_split of NSPLIT contiguous "
                       "ranges of [loop_lo, loop_hi)")
            out.append("n_chunk = (loop_hi - loop_lo + NSPLIT - 1) // NSPLIT")
            out.append("loop_lo = tl.minimum(loop_lo + pid_split * n_chunk, loop_hi)")
            out.append("loop_hi = tl.minimum(loop_lo + n_chunk, loop_hi)")
        masked = Scope(root, unmasked=False)
        self.gen_body(masked)
        if full is not None:
            flo = "loop_lo" if full[0] is None else \
                f"tl.minimum(tl.maximum(({full[0]}){mul}, loop_lo), loop_hi)"
            fhi = "loop_hi" if full[1] is None else \
                f"tl.minimum(tl.maximum(({full[1]}){mul}, full_lo), loop_hi)"
            out.append("# tiles [full_lo, full_hi) are fully unmasked: no mask arithmetic")
            out.append(f"full_lo = {flo}")
            out.append(f"full_hi = {fhi}")
            out.append("n_head = full_lo - loop_lo")
            out.append("n_masked = n_head + (loop_hi - full_hi)")
            out.append("for step in range(0, n_masked):")
            out.append(f"    {self._jv()} = tl.where(step < n_head, loop_lo + step, "
                       "full_hi + step - n_head)")
            out += self._sub_lines()
            out += self._body_lines(masked, holes, root)
            unmasked = Scope(root, unmasked=True)
            self.gen_body(unmasked)
            out.append(f"for {self._jv()} in range(full_lo, full_hi):")
            out += self._sub_lines()
            out += ["    " + ln for ln in unmasked.lines]
        else:
            out.append(f"for {self._jv()} in range(loop_lo, loop_hi):")
            out += self._sub_lines()
            out += self._body_lines(masked, holes, root)
        return out

    def _jv(self) -> str:
        return "j" if self.sub else self.nm("var", self.it)

    def _sub_lines(self) -> list[str]:
        if not self.sub:
            return []
        sub, nsub = self.sub
        it, c = self.nm("var", self.it), self.nm("var", self.cvar)
        return [f"    {it} = j // {nsub}",
                f"    {c} = (j % {nsub}) * {self.block(self.cvar)} + "
                f"tl.arange(0, {self.block(self.cvar)})"]

    # ------------------------------------------------------------------ split-K
    def _epi_deps(self) -> list:
        """Prologue statements that the epilogue reads (transitively)."""
        pro = {e.tensor: e for e in self.pro}
        need, todo = set(), [a.tensor for e in self.epi for a in _accesses(e)]
        while todo:
            t = todo.pop()
            if t in pro and t not in need:
                need.add(t)
                todo += [a.tensor for a in _accesses(pro[t])]
        return [e for e in self.pro if e.tensor in need]

    def carried_groups(self, t: str) -> tuple:
        info = self.prog.tensors[t]
        return _canon({self.group[v] for j, v in enumerate(info.axes)
                       if j != info.iter_axis and self.group.get(v)})

    def _scratch(self, t: str, split: str) -> str:
        """Pointers of the scratch lanes of running tensor t for split `split`: one f32
        block per (split, grid program, row program), lanes in the block's layout."""
        gs = self.carried_groups(t)
        size = " * ".join(self._group_block(g) for g in gs) or "1"
        lane_var = {"R": "r", "F": self.nm("var", self.fvar) if self.fvar else None}
        offs, inner = [], "1"
        for g in reversed(gs):
            term = lane_var[g] if inner == "1" else f"{lane_var[g]} * {inner}"
            offs.append(_bcast(f"({term})", (g,), gs))
            inner = self._group_block(g) if inner == "1" else f"{inner} * {self._group_block(g)}"
        prog = (f"((tl.cast({split}, tl.int64) * tl.num_programs(1) + pid_grid) "
                f"* tl.num_programs(0) + pid_rows)")
        ptr = f"{self.nm('scratch', t)} + {prog} * ({size})"
        return ptr + "".join(f" + {o}" for o in reversed(offs))

    def store_partials(self, root) -> list[str]:
        out = ["# split-K: this split's partial state (running max and sums) for the merge"]
        for t, name in self.carried.items():
            out.append(f"tl.store({self._scratch(t, 'pid_split')}, {name})")
        return out

    def gen_merge(self, root) -> list[str]:
        """The associative online-softmax merge of the NSPLIT partial states, starting from
        the spec's initial iterates (already in the carried values):
            m' = max(m, m_s);  T' = T * exp(m - m') + T_s * exp(m_s - m')
        with exp(-inf - -inf) = 0 (`_ein_sub`): a split that saw no key holds (-inf, 0)
        and contributes nothing; a row without any key ends with T = 0."""
        rm, sums = self.online
        cm = self.carried[rm]
        rgs = self.carried_groups(rm)
        out = ["# split-K merge: the partial states of the NSPLIT key ranges, in order",
               "for s in range(0, NSPLIT):"]
        b = "    "
        out.append(f"{b}p_m = tl.load({self._scratch(rm, 's')})")
        out.append(f"{b}m_new = tl.maximum({cm}, p_m)")
        out.append(f"{b}alpha = tl.exp(_ein_sub({cm}, m_new))")
        out.append(f"{b}beta = tl.exp(_ein_sub(p_m, m_new))")
        for k, t in enumerate(sums):
            c = self.carried[t]
            gs = self.carried_groups(t)
            if not set(rgs) <= set(gs):
                _fail(f"internal: running sum '{t}' lacks a rank of the running max", self.prog)
            out.append(f"{b}p_{k} = tl.load({self._scratch(t, 's')})")
            out.append(f"{b}{c} = {c} * {_bcast('alpha', rgs, gs)} + p_{k} * "
                       f"{_bcast('beta', rgs, gs)}")
        out.append(f"{b}{cm} = m_new")
        return out

    def splittable(self) -> str | None:
        """None when the loop's running state is an online normalization (FuseMax
        Cascade 5): a running max `RM[v+1] = max(RM[v], LM)` of a tile max `LM`, and
        running sums `T[v+1] = A + T[v] * PRM` with `PRM = exp(RM[v] - RM[v+1])` and `A` a
        sum over the tile of a product with one factor `exp(X - RM[v+1])`. Such a state
        absorbs a tile in sub-tiles exactly as in one step (the same algebra merges
        partial states), so the tile rank may run in smaller blocks. Else: why not."""
        st = self.online_state()
        return st if isinstance(st, str) else None

    def online_state(self):
        """(running max tensor, [running sum tensors]) when the loop state is an online
        normalization (see `splittable`), else a string saying why not. Derived from the
        structure of the recurrences, never from tensor names."""
        c = self.cvar
        defs = {e.tensor: e for e in self.body}
        recs = [e for e in self.body if e.kind == "recur"]

        def prev(x, t):
            info = self.prog.tensors[t]
            return isinstance(x, N.Access) and x.tensor == t and \
                isinstance(x.indices[info.iter_axis], N.Var)

        def nxt(x, t):
            info = self.prog.tensors[t]
            return isinstance(x, N.Access) and x.tensor == t and \
                not isinstance(x.indices[info.iter_axis], (N.Var, N.Extent, N.Num))

        rmax = [e for e in recs if isinstance(e.rhs, N.Call) and e.rhs.fn == "max"]
        if len(rmax) != 1:
            return "no single running max"
        rm = rmax[0]
        a, b = rm.rhs.args
        if not prev(a, rm.tensor):
            a, b = b, a
        if not prev(a, rm.tensor) or not isinstance(b, N.Access) or b.tensor not in defs:
            return "the running max is not max(RM[v], LM)"
        lm = defs[b.tensor]
        if not lm.reduced or lm.reduced[-1].op != "max" or lm.reduced[-1].vars != (c,):
            return "LM is not a max over the tile"
        carried = {e.tensor for e in recs}

        def reads_state(t, seen=()):
            e = defs.get(t)
            if e is None or t in seen:
                return False
            for x in _accesses(e):
                if x.tensor in carried or reads_state(x.tensor, seen + (t,)):
                    return True
            return False
        if reads_state(lm.tensor):
            return "LM depends on the running state"

        def is_prm(x):
            if not (isinstance(x, N.Access) and x.tensor in defs):
                return False
            r = defs[x.tensor].rhs
            return (isinstance(r, N.Call) and r.fn == "exp" and isinstance(r.args[0], N.BinOp)
                    and r.args[0].op == "-" and prev(r.args[0].left, rm.tensor)
                    and nxt(r.args[0].right, rm.tensor))

        def is_scaled(x):  # exp(X - RM[v+1]) with X free of the running state
            if not (isinstance(x, N.Access) and x.tensor in defs):
                return False
            r = defs[x.tensor].rhs
            if not (isinstance(r, N.Call) and r.fn == "exp" and isinstance(r.args[0], N.BinOp)
                    and r.args[0].op == "-" and nxt(r.args[0].right, rm.tensor)):
                return False
            inner = r.args[0].left
            return not any(isinstance(y, N.Access) and (y.tensor in carried
                                                         or reads_state(y.tensor))
                           for y in N.walk(inner))

        for e in recs:
            if e is rm:
                continue
            if not (isinstance(e.rhs, N.BinOp) and e.rhs.op == "+"):
                return f"'{e.tensor}' is not A + T * PRM"
            x, y = e.rhs.left, e.rhs.right
            for first, second in ((x, y), (y, x)):
                if isinstance(second, N.Access) and second.tensor in defs:
                    sr = defs[second.tensor].rhs
                    if (isinstance(sr, N.BinOp) and sr.op == "*" and
                            ((prev(sr.left, e.tensor) and is_prm(sr.right)) or
                             (prev(sr.right, e.tensor) and is_prm(sr.left)))):
                        break
                if isinstance(second, N.BinOp) and second.op == "*" and (
                        (prev(second.left, e.tensor) and is_prm(second.right)) or
                        (prev(second.right, e.tensor) and is_prm(second.left))):
                    break
            else:
                return f"'{e.tensor}' is not A + T * PRM"
            if not (isinstance(first, N.Access) and first.tensor in defs):
                return f"the tile term of '{e.tensor}' is not a tensor"
            ae = defs[first.tensor]
            if [r.op for r in ae.reduced] != ["sum"] or c not in ae.reduced[0].vars:
                return f"the tile term of '{e.tensor}' is not a sum over the tile"
            factors, _ = _factorize(ae.rhs)
            scaled = [f for f, recip in factors if is_scaled(f) and not recip]
            others = [f for f, recip in factors if not is_scaled(f)]
            if len(scaled) != 1 or any(isinstance(y, N.Access) and (
                    y.tensor in carried or reads_state(y.tensor))
                    for f in others for y in N.walk(f)):
                return f"the tile term of '{e.tensor}' is not a sum of exp(X - RM[v+1]) * ..."
        return rm.tensor, [e.tensor for e in recs if e is not rm]

    def split_k(self) -> str | None:
        """None when the key rank may be split across programs (flash-decoding): the loop
        state is an online normalization (`online_state`), so partial states of disjoint
        key ranges merge exactly with the associative merge
            m = max(m_a, m_b);  T = T_a * exp(m_a - m) + T_b * exp(m_b - m)
        (exp(-inf - -inf) = 0: a range without a present key contributes nothing), and the
        outputs read only the final iterates. Else: why not."""
        if self.cvar is None:
            return "no tile rank under the loop"
        st = self.online_state()
        if isinstance(st, str):
            return st
        rm, sums = st
        inits = {e.tensor: e for e in self.init}
        if set(inits) != {rm, *sums}:
            return "the initial iterates are not exactly the running max and sums"
        for t in (rm, *sums):
            info = self.prog.tensors[t]
            gs = {self.group.get(v) for j, v in enumerate(info.axes) if j != info.iter_axis}
            if not gs <= {None, "R", "F"}:
                return f"the running tensor '{t}' varies along a tile or contracted rank"
        r0 = inits[rm].rhs
        if isinstance(r0, N.Num) and r0.value == -math.inf or (
                isinstance(r0, N.Unary) and r0.op == "-" and isinstance(r0.operand, N.Num)
                and r0.operand.value == math.inf):
            # an empty start: the sums must start at 0 (else no split is exact when the
            # whole key range is empty)
            for t in sums:
                z = inits[t].rhs
                if not (isinstance(z, N.Num) and z.value == 0):
                    return f"'{t}' starts at a nonzero value under a running max of -inf"
        return None

    def _body_lines(self, masked, holes, root) -> list[str]:
        if not holes:
            return ["    " + ln for ln in masked.lines]
        # a filter with `or` can leave fully masked tiles inside [lo, hi): test each tile
        conds = [c for c in (self._tile_can(x) for x in self.tile_atoms()) if c is not None]
        if not conds:
            return ["    " + ln for ln in masked.lines]
        out = [f"    if {' & '.join(conds)}:"]
        out += ["        " + ln for ln in masked.lines]
        return out

    def _tile_can(self, x):
        """Code: the predicate can be true somewhere in the current tile (None: unknown)."""
        if isinstance(x, N.BinOp) and x.op in ("and", "or"):
            a, b = self._tile_can(x.left), self._tile_can(x.right)
            if x.op == "and":
                return a if b is None else b if a is None else f"({a} & {b})"
            return None if a is None or b is None else f"({a} | {b})"
        if isinstance(x, N.Unary) and x.op == "not":
            return self._tile_can(_negate(x.operand))
        it = self.nm("var", self.it)
        r = self.range_of(x, "can")
        if r is None or (r[0] is None and r[1] is None):
            return None
        parts = []
        if r[0] is not None:
            parts.append(f"({it} >= {r[0]})")
        if r[1] is not None:
            parts.append(f"({it} < {r[1]})")
        return "(" + " & ".join(parts) + ")"

    def gen_body(self, sc):
        for e in self.body:
            sc.emit(f"# {print_einsum(e)}")
            v = self.statement(e, sc)
            if e.kind == "recur":
                info = self.prog.tensors[e.tensor]
                gs = _canon({self.group[x] for j, x in enumerate(info.axes)
                             if j != info.iter_axis and self.group.get(x)})
                if v.pres:
                    v = Val(self.filled(v, 0.0, v.pres, v.groups, sc), v.groups, TRUE, None,
                            v.inf, v.loop)
                    # a running tensor is present after its first iterate in the cascades
                    # this backend accepts; anything else is refused below
                    _fail(f"the running tensor '{e.tensor}' may be absent after an iteration; "
                          "not supported", self.prog, e.span)
                code = self.as_f32(v, sc)
                if v.groups != gs:
                    shape = "[" + ", ".join(self._group_block(g) for g in gs) + "]"
                    code = f"tl.full({shape}, 0.0, tl.float32) + {_bcast(code, v.groups, gs)}"
                name = self.nm("carry", e.tensor) + "_next"
                sc.emit(f"{name} = {code}")
                sc.put(("tensor", e.tensor, "next"), Val(name, gs, TRUE, None, True, True))
            else:
                self.store_tensor(e, v, sc, sc)
        for t in sorted(self.recur):
            c = self.nm("carry", t)
            sc.emit(f"{c} = {c}_next")

    # ------------------------------------------------------------------ module text
    def assemble(self, body: list[str]) -> "KernelSource":
        prog = self.prog
        args, argkinds = [], []
        for d in prog.inputs:
            args.append(self.nm("input", d.name))
            argkinds.append(("ptr", d.name))
            for k in range(len(d.indices)):
                args.append(self.nm("stride", f"{d.name}_{k}"))
                argkinds.append(("stride", (d.name, k)))
        for d in prog.outputs:
            args.append(self.nm("output", d.name))
            argkinds.append(("ptr", d.name))
            for k in range(len(d.indices)):
                args.append(self.nm("stride", f"{d.name}_{k}"))
                argkinds.append(("stride", (d.name, k)))
        extents = sorted(self.used_extents | {self.var_rank[v] for v in self.grid_vars})
        for r in extents:
            args.append(self.nm("extent", r))
            argkinds.append(("extent", r))
        params = sorted(self.used_params)
        for p in params:
            args.append(self.nm("param", p))
            argkinds.append(("param", p))
        if self.mode != "main":
            for t in self.carried:
                args.append(self.nm("scratch", t))
                argkinds.append(("scratch", t))
            args.append("NSPLIT")
            argkinds.append(("nsplit", None))
        blocks = ["BLOCK_R"]
        for v in self.secondary:
            blocks.append(self.block(v))
        if self.row_const is None:
            blocks.append(self.block(self.primary))
        for v, g in self.group.items():
            if g in ("C", "E", "F"):
                blocks.append(self.block(v))
        consts = blocks + ["PREC", "UPCAST"]
        nospec = [a for a, (k, _) in zip(args, argkinds) if k in ("extent", "param", "nsplit")]
        name = {"main": "einsumc_kernel", "split": "einsumc_kernel_split",
                "merge": "einsumc_merge"}[self.mode]
        if self.mode == "main":
            self.kernel_args = args
            self.kernel_argkinds = argkinds
            self.kernel_consts = consts
        return KernelSource(self, args, argkinds, consts, nospec, body, name)


class _NotAffine(Exception):
    pass


# =============================================================================== scopes
class Scope:
    """Generated lines and memoized values of one region (the prologue, a loop body)."""

    def __init__(self, parent: "Scope | None", unmasked: bool):
        self.parent = parent
        self.root = parent.root if parent is not None else self
        self.lines: list[str] = []
        self.memo: dict = {}
        self.unmasked = unmasked

    def emit(self, line: str):
        self.lines.append(line)

    def lookup(self, key):
        s = self
        while s is not None:
            if key in s.memo:
                return s.memo[key]
            s = s.parent
        return None

    def put(self, key, value):
        self.memo[key] = value

    def tensor(self, name, slot):
        return self.lookup(("tensor", name, slot))


@dataclass
class KernelSource:
    low: Lowering
    args: list
    argkinds: list
    consts: list
    nospec: list
    body: list
    name: str = "einsumc_kernel"


# =============================================================================== utilities
def const_extent(prog: Program, rank: str) -> int | None:
    """A rank's extent when the spec fixes it (`E = 64`, `M1 = 4 / 2`), else None."""
    r = prog.rank(rank)
    if r.extent is None:
        return None
    from ...ir.symbolic import evaluate
    try:
        val = evaluate(r.extent, {}, {})
    except Exception:
        return None
    return int(val) if float(val).is_integer() else None


_accesses = N.reads
_substitute = N.substitute


def _conjuncts(x: N.Expr) -> list:
    if isinstance(x, N.BinOp) and x.op == "and":
        return _conjuncts(x.left) + _conjuncts(x.right)
    return [x]


def _and_all(atoms: list):
    out = None
    for a in atoms:
        out = a if out is None else N.BinOp("and", out, a)
    return out


def _has_or(x) -> bool:
    return any(isinstance(n, N.BinOp) and n.op == "or" for n in N.walk(x)) or any(
        isinstance(n, N.Unary) and n.op == "not" for n in N.walk(x))


def _negate(x: N.Expr) -> N.Expr:
    if isinstance(x, N.BinOp) and x.op in N.CMP_OPS:
        op = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}[x.op]
        return N.BinOp(op, x.left, x.right)
    if isinstance(x, N.BinOp) and x.op in ("and", "or"):
        return N.BinOp("or" if x.op == "and" else "and", _negate(x.left), _negate(x.right))
    if isinstance(x, N.Unary) and x.op == "not":
        return x.operand
    return N.Unary("not", x)


def _mx(a, b, none_wins=False):
    if a is None or b is None:
        return None if none_wins else (a if b is None else b)
    return f"tl.maximum({a}, {b})"


def _mn(a, b, none_wins=False):
    if a is None or b is None:
        return None if none_wins else (a if b is None else b)
    return f"tl.minimum({a}, {b})"


def _canon(gs) -> tuple:
    return tuple(g for g in GROUPS if g in gs)


def _bcast(code: str, groups: tuple, frame: tuple) -> str:
    if tuple(groups) == tuple(frame) or not groups:
        return code
    if len(frame) == 2 and len(groups) == 1:
        return f"{_atomic(code)}[:, None]" if groups[0] == frame[0] else f"{_atomic(code)}[None, :]"
    if len(frame) == 2 and tuple(groups) == (frame[1], frame[0]):
        return f"tl.trans({code})"
    raise EinsumcError([error(f"triton backend: internal: cannot broadcast {groups} to {frame}")])


def _atomic(code: str) -> str:
    return code if code.isidentifier() else f"({code})"


def _atom_key(a) -> str:
    """A deterministic sort key (repr of a frozenset follows the per-process hash order)."""
    if isinstance(a, AnyOf):
        return "any(" + ",".join(sorted(_atom_key(b) for b in a.mask)) + ")" + a.group
    if isinstance(a, OrOf):
        return ("or(" + ",".join(sorted(_atom_key(b) for b in a.a)) + ";"
                + ",".join(sorted(_atom_key(b) for b in a.b)) + ")")
    if isinstance(a, Raw):
        return "raw:" + a.code
    return print_expr(a)


def _num(v: float) -> str:
    if v == math.inf:
        return "float('inf')"
    if v == -math.inf:
        return "float('-inf')"
    if v != v:
        return "float('nan')"
    return repr(float(v))


def _same_num(a, b) -> bool:
    return a == b or (a != a and b != b)


def _is_nonzero_literal(code: str) -> bool:
    try:
        return float(code.strip("()").replace(" * 1.0", "")) != 0.0
    except ValueError:
        return False


def _eval_fn(fn: str, x: float):
    try:
        if fn == "exp":
            return math.exp(x) if x != -math.inf else 0.0
        if fn == "log":
            return math.log(x) if x > 0 else (-math.inf if x == 0 else None)
        if fn == "sqrt":
            return math.sqrt(x) if x >= 0 else None
        if fn == "abs":
            return abs(x)
        if fn == "tanh":
            return math.tanh(x)
        if fn == "sigmoid":
            return 1 / (1 + math.exp(-x)) if x != -math.inf else 0.0
    except OverflowError:
        return None
    return None


def _factorize(node):
    """A product `a * b / c * 2` as factors [(node, is_reciprocal)] and a constant."""
    factors, const = [], 1.0

    def go(n, recip):
        nonlocal const
        if isinstance(n, N.BinOp) and n.op == "*":
            go(n.left, recip)
            go(n.right, recip)
        elif isinstance(n, N.BinOp) and n.op == "/":
            go(n.left, recip)
            go(n.right, not recip)
        elif isinstance(n, N.Unary) and n.op == "-":
            const = -const
            go(n.operand, recip)
        elif isinstance(n, N.Num) and n.value != 0 and math.isfinite(n.value):
            const = const / n.value if recip else const * n.value
        else:
            factors.append((n, recip))

    go(node, False)
    return factors, const


def _npow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
