"""Parse `.ein` text into the AST (`ir.nodes.Module`), with a span on every node.

Before lark sees the text, comments are blanked out and continuation lines (a line that
starts with whitespace continues the statement above it) are joined by replacing the
joining newlines with spaces: offsets stay those of the file, so every span is exact.
Syntax errors become diagnostics naming what was expected.
"""
from __future__ import annotations

import functools
import importlib.resources
import re

import lark
from lark import Lark, Token, Transformer, v_args

from ..diagnostics import Diagnostic, EinsumcError, Source, Span, error
from ..ir import nodes as N

MAX_SOURCE_BYTES = 4_000_000
MAX_NESTING = 200

_TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "LSQB": "'['", "RSQB": "']'", "LPAR": "'('",
    "RPAR": "')'", "COMMA": "','", "EQUAL": "'='", "_NL": "end of line", "$END": "end of input",
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "COLON": "':'",
    "__ANON_0": "'::'", "CMPOP": "a comparison", "REDOP": "a reduction (max, min, sum, prod)",
    "INF": "'inf'", "WHERE": "'where'", "NOT": "'not'", "AND": "'and'", "OR": "'or'",
    "PERCENT": "'%'", "DOUBLESLASH": "'//'",
}


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    text = importlib.resources.files("einsumc.grammar").joinpath("ein.lark").read_text()
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def preprocess(text: str) -> str:
    """Blank comments and join continuation lines, keeping every character's offset."""
    chars = list(text)
    if text.startswith("\ufeff"):  # a byte-order mark (editors on Windows write one)
        chars[0] = " "
    for m in re.finditer(r"#[^\r\n]*", text):
        chars[m.start():m.end()] = " " * (m.end() - m.start())
    blanked = "".join(chars)
    lines = blanked.split("\n")
    out = list(blanked)
    offset = 0
    last_content_end = None  # offset just past the last non-blank line's content
    for line in lines:
        body = line.rstrip("\r")
        if body.strip():
            if body[0] in " \t\f" and last_content_end is not None:
                for i in range(last_content_end, offset):
                    if out[i] in "\r\n":
                        out[i] = " "
            last_content_end = offset + len(body)
        offset += len(line) + 1
    return "".join(out)


def parse(text: str, name: str = "<spec>") -> N.Module:
    """Parse a spec; raise `EinsumcError` on a syntax error."""
    source = Source(name, text)
    if len(text) > MAX_SOURCE_BYTES:
        raise EinsumcError([error(f"spec is too large ({len(text)} characters)", source.span(0))],
                           source)
    joined = preprocess(text)
    _check_nesting(joined, source)  # comments blanked, continuation lines joined
    try:
        tree = _parser().parse(joined)
    except lark.exceptions.UnexpectedInput as exc:
        raise EinsumcError([_syntax_diagnostic(exc, source)], source) from None
    except RecursionError:
        raise EinsumcError([error("expression nested too deeply", source.span(0))], source) from None
    try:
        stmts = _ToAst(source).transform(tree)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, EinsumcError):
            raise exc.orig_exc from None
        if isinstance(exc.orig_exc, RecursionError):
            raise EinsumcError([_too_deep(tree, source)], source) from None
        raise
    except RecursionError:
        raise EinsumcError([_too_deep(tree, source)], source) from None
    return N.Module(tuple(stmts.children if isinstance(stmts, lark.Tree) else stmts), name)


def _too_deep(tree: lark.Tree, source: Source) -> Diagnostic:
    """Where an expression too deep to process is: the statement with the deepest tree."""
    best_depth, best_pos = 0, 0
    for stmt in tree.children:
        if not isinstance(stmt, lark.Tree):
            continue
        stack, deepest = [(stmt, 1)], 0
        while stack:  # iterative: the tree is too deep for recursion
            node, d = stack.pop()
            deepest = max(deepest, d)
            stack.extend((c, d + 1) for c in node.children if isinstance(c, lark.Tree))
        if deepest > best_depth:
            pos = getattr(stmt.meta, "start_pos", 0) if not stmt.meta.empty else 0
            best_depth, best_pos = deepest, pos
    return error(f"expression nested too deeply ({best_depth} levels: a chain of that many "
                 "operators or nested calls); split it into several Einsums",
                 source.span(best_pos))


def _check_nesting(text: str, source: Source) -> None:
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
            if depth > MAX_NESTING:
                raise EinsumcError([error(f"brackets nested more than {MAX_NESTING} deep",
                                          source.span(i))], source)
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch == "\n":
            depth = 0


def _syntax_diagnostic(exc: lark.exceptions.UnexpectedInput, source: Source) -> Diagnostic:
    pos = getattr(exc, "pos_in_stream", None) or 0
    if isinstance(exc, lark.exceptions.UnexpectedToken):
        tok = exc.token
        pos = tok.start_pos if tok.start_pos is not None else len(source.text)
        if tok.type == "$END":
            what = "end of input"
            pos = len(source.text.rstrip())
        elif tok.type == "_NL":
            what = "end of line"
        else:
            what = repr(str(tok))
        expected = sorted({_TOKEN_NAMES.get(t, t.lower() if t.isupper() and not t.startswith("_")
                                             else repr(t)) for t in exc.expected})
        bad_number = _malformed_number(source.text, pos, tok.type)
        if bad_number:
            word, start = bad_number
            return error(f"syntax error: malformed number '{word}'",
                         source.span(start, start + len(word)))
        msg = f"syntax error: unexpected {what}"
        if expected and len(expected) <= 8:
            msg += "; expected " + ", ".join(expected)
        msg += _layout_hint(source.text, pos, tok.type)
        return error(msg, source.span(pos, pos + max(1, len(str(tok)) if tok.type != "_NL" else 1)))
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        ch = source.text[pos] if pos < len(source.text) else ""
        return error(f"syntax error: unexpected character {ch!r}", source.span(pos))
    return error("syntax error", source.span(pos))


def _malformed_number(text: str, pos: int, tok_type: str) -> tuple[str, int] | None:
    """The whole word when a token glued to a number makes it malformed (`1.2.5`, `1e+`, `2x`)."""
    if tok_type not in ("NUMBER", "NAME") or pos == 0 or not (text[pos - 1].isdigit()
                                                                or text[pos - 1] == "."):
        return None

    def part(c: str) -> bool:
        return c.isalnum() or c in "._"

    start = pos
    while start > 0 and (part(text[start - 1]) or (
            text[start - 1] in "+-" and start > 1 and text[start - 2] in "eE")):
        start -= 1
    end = pos
    while end < len(text) and (part(text[end]) or (
            text[end] in "+-" and text[end - 1] in "eE")):
        end += 1
    word = text[start:end]
    if word[:1].isdigit() or (word[:1] == "." and word[1:2].isdigit()):
        return word, start
    return None


def _layout_hint(text: str, pos: int, tok_type: str) -> str:
    """Explain the line-continuation rule where a syntax error is likely caused by layout."""
    line_start = text.rfind("\n", 0, pos) + 1
    indent = text[line_start:pos]
    if tok_type not in ("_NL", "$END") and line_start > 0 and indent and not indent.strip():
        return (" (this line begins with whitespace, so it continues the statement above; "
                "remove the indentation to start a new statement)")
    if tok_type == "_NL":
        before = text[line_start:pos].split("#", 1)[0].rstrip()
        if before and before[-1] in "+-*/,([=<>":
            return " (to continue a statement on the next line, indent that line)"
    return ""


def _span(source: Source, meta_or_token) -> Span:
    if isinstance(meta_or_token, Token):
        return source.span(meta_or_token.start_pos, meta_or_token.end_pos)
    return source.span(meta_or_token.start_pos, meta_or_token.end_pos)


@v_args(meta=True)
class _ToAst(Transformer):
    """Parse tree -> AST nodes (names unresolved) with spans."""

    def __init__(self, source: Source):
        super().__init__()
        self.src = source

    def _s(self, meta) -> Span:
        return _span(self.src, meta)

    # ---- statements
    def start(self, meta, items):
        return [s for group in items for s in (group if isinstance(group, list) else [group])]

    def rank_decl(self, meta, items):
        return list(items)

    def rank_item(self, meta, items):
        name = items[0]
        return N.RankDecl(str(name), items[1] if len(items) > 1 else None, self._s(meta))

    def input_decl(self, meta, items):
        return [N.TensorDecl("input", *t) for t in items]

    def output_decl(self, meta, items):
        return [N.TensorDecl("output", *t) for t in items]

    def tensor_decl(self, meta, items):
        name = str(items[0])
        indices: tuple[str, ...] = ()
        spans: tuple = ()
        dtype = ""
        for it in items[1:]:
            if isinstance(it, tuple):
                indices, spans = it
            else:
                dtype = str(it)
        return (name, indices, dtype, self._s(meta), spans)

    def index_names(self, meta, items):
        return tuple(str(t) for t in items), tuple(_span(self.src, t) for t in items)

    def param_decl(self, meta, items):
        return list(items)

    def param_item(self, meta, items):
        return N.ParamDecl(str(items[0]), items[1] if len(items) > 1 else None, self._s(meta))

    def stop_stmt(self, meta, items):
        return N.Stop(items[0], self._s(meta))

    def einsum(self, meta, items):
        (name, indices, lhs_span), rhs, *clauses = items
        reds: list[N.Reduction] = []
        filt = None
        for c in clauses:
            if isinstance(c, tuple) and c[0] == "where":
                if filt is not None:
                    raise EinsumcError([error("an Einsum takes one 'where' clause; combine "
                                              "predicates with 'and'", c[2])], self.src)
                filt = c[1]
            else:
                reds.extend(c)
        return N.Einsum(name, indices, rhs, tuple(reds), filt, self._s(meta))

    def lhs(self, meta, items):
        return (str(items[0]), tuple(items[1:]), self._s(meta))

    def lhs_index(self, meta, items):
        return _lhs_index(items[0], items[1] if len(items) > 1 else None, self._s(meta))

    def reduce_clause(self, meta, items):
        return list(items)

    def reduce_op(self, meta, items):
        op = N.REDUCE_OPS[str(items[0])]
        return N.Reduction(op, tuple(str(t) for t in items[1:]), self._s(meta))

    def where_clause(self, meta, items):
        return ("where", items[0], self._s(meta))

    # ---- expressions
    def number(self, meta, items):
        text = str(items[0])
        return N.Num(float(text), text, self._s(meta))

    def inf(self, meta, items):
        return N.Num(float("inf"), "inf", self._s(meta))

    def name(self, meta, items):
        return N.Name(str(items[0]), self._s(meta))

    def access(self, meta, items):
        return N.Access(str(items[0]), tuple(items[1:]), self._s(meta))

    def call(self, meta, items):
        return N.Call(str(items[0]), tuple(i for i in items[1:] if i is not None), self._s(meta))

    def _bin(op):  # noqa: N805 - a small factory for the binary rules
        def rule(self, meta, items):
            left, right = items[0], items[-1]
            return N.BinOp(op, left, right, self._s(meta))
        return rule

    add = _bin("+")
    sub = _bin("-")
    mul = _bin("*")
    div = _bin("/")
    floordiv = _bin("//")
    mod = _bin("%")
    and_ = _bin("and")
    or_ = _bin("or")

    def compare(self, meta, items):
        return N.BinOp(str(items[1]), items[0], items[2], self._s(meta))

    def neg(self, meta, items):
        return N.Unary("-", items[0], self._s(meta))

    def not_(self, meta, items):
        return N.Unary("not", items[0], self._s(meta))


def _lhs_index(expr, value, span) -> N.Index:
    """Classify an LHS index: `v`, `v+1` (next iterate), `v=0` (initial iterate).

    Anything else becomes an "invalid" index whose `problem` the checker reports.
    """
    def var_of(e):
        return e.name if isinstance(e, N.Name) else None

    if value is not None:
        v = var_of(expr)
        if v is None:
            return N.Index("", "invalid", span, "an initialization index must be `v=0` "
                           "for a rank variable v")
        if not (isinstance(value, N.Num) and value.value == 0):
            return N.Index(v, "invalid", span, f"an iterative tensor is initialized at `{v}=0`; "
                           "other initial coordinates are not supported")
        return N.Index(v, "init", span)
    v = var_of(expr)
    if v is not None:
        return N.Index(v, "plain", span)
    if isinstance(expr, N.BinOp) and expr.op in "+-" and var_of(expr.left):
        v = var_of(expr.left)
        if expr.op == "+" and isinstance(expr.right, N.Num) and expr.right.value == 1:
            return N.Index(v, "next", span)
        return N.Index(v, "invalid", span, f"a recurrence defines the next iterate `{v}+1`; "
                       "other offsets on the left-hand side are not allowed")
    return N.Index("", "invalid", span, "a left-hand-side index must be a rank variable, "
                   "`v+1` (recurrence) or `v=0` (initialization)")
