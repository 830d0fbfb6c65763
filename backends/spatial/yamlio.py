"""Reading the backend's YAML files (architectures, mappings, sweep configs) with errors
that name the file and the field: `arch/fusemax.yaml: buffer.capacity_bytes: expected a
positive number, got 'lots'`.
"""
from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any

from ...diagnostics import EinsumcError, error


def fail(where: str, msg: str) -> EinsumcError:
    """An EinsumcError for a problem in a YAML file (`where` is `file: field.path`)."""
    return EinsumcError([error(f"{where}: {msg}")])


def load_yaml(path: str | Path, what: str) -> dict:
    """A YAML mapping from `path`; a clear error if it is missing or malformed."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise EinsumcError([error(f"cannot read {what} file {p}: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise EinsumcError([error(f"{p}: not valid YAML{at}: "
                                  f"{getattr(exc, 'problem', None) or exc}")]) from None
    if not isinstance(data, dict):
        raise fail(str(p), f"a {what} file must be a YAML mapping (key: value lines), "
                           f"got {type(data).__name__}")
    return data


class Fields:
    """A typed, checked view of one YAML mapping: every read names its field path, and
    `done()` rejects keys nobody read (typos such as `capcity_bytes`)."""

    def __init__(self, data: Any, file: str, path: str = ""):
        self.file = file
        self.path = path
        if not isinstance(data, dict):
            raise fail(self.where(), f"expected a mapping (key: value), got {_show(data)}")
        self.data = data
        self.seen: set[str] = set()

    def where(self, key: str | None = None) -> str:
        p = self.path if key is None else (f"{self.path}.{key}" if self.path else key)
        return f"{self.file}: {p}" if p else self.file

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ..., ) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise fail(self.where(key), "required field is missing")
            return default
        return self.data[key]

    def sub(self, key: str, default: Any = ...) -> "Fields | None":
        v = self.raw(key, default)
        if v is None and default is None:
            return None
        return Fields(v, self.file, f"{self.path}.{key}" if self.path else key)

    def number(self, key: str, default: Any = ..., positive: bool = True,
               allow_zero: bool = False) -> float:
        v = self.raw(key, default)
        return check_number(v, self.where(key), positive=positive, allow_zero=allow_zero)

    def integer(self, key: str, default: Any = ..., minimum: int = 1) -> int:
        v = self.raw(key, default)
        return check_int(v, self.where(key), minimum)

    def string(self, key: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> str:
        v = self.raw(key, default)
        if not isinstance(v, str) or not v:
            raise fail(self.where(key), f"expected a non-empty string, got {_show(v)}")
        if choices is not None and v not in choices:
            raise fail(self.where(key), f"'{v}' is not one of: {', '.join(choices)}")
        return v

    def done(self) -> None:
        extra = [k for k in self.data if k not in self.seen]
        if extra:
            k = extra[0]
            expected = ", ".join(sorted(self.seen)) or "none"
            raise fail(self.where(str(k)), f"unknown field (expected one of: {expected})")


def check_number(v: Any, where: str, positive: bool = True, allow_zero: bool = False) -> float:
    if isinstance(v, str):
        try:
            v = float(v)  # YAML reads 940e6 as a string
        except ValueError:
            raise fail(where, f"expected a number, got {_show(v)}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(where, f"expected a number, got {_show(v)}")
    if v != v or v in (float("inf"), float("-inf")):
        raise fail(where, f"expected a finite number, got {v}")
    if positive and (v < 0 or (v == 0 and not allow_zero)):
        raise fail(where, f"expected a {'non-negative' if allow_zero else 'positive'} number, "
                          f"got {v}")
    return v


def check_int(v: Any, where: str, minimum: int = 1) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise fail(where, f"expected an integer, got {_show(v)}")
    if v < minimum:
        raise fail(where, f"expected an integer >= {minimum}, got {v}")
    return v


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v)
    if isinstance(v, (dict, list)):
        return f"a {type(v).__name__}"
    return repr(v)


# ----------------------------------------------------------------------------- expressions
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
           ast.Mod: operator.mod}


def eval_expr(text: Any, names: dict[str, float], where: str) -> float:
    """An arithmetic expression over `names` (`B*H`, `seq_len`, `E*H`, `2**20`); numbers
    pass through. Only + - * / // % ** and parentheses: no calls, no attributes."""
    if isinstance(text, bool):
        raise fail(where, f"expected a number or an expression, got {text!r}")
    if isinstance(text, (int, float)):
        return text
    if not isinstance(text, str):
        raise fail(where, f"expected a number or an expression, got {_show(text)}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise fail(where, f"cannot read expression {text!r}") from None

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) \
                and not isinstance(n.value, bool):
            return n.value
        if isinstance(n, ast.Name):
            if n.id not in names:
                raise fail(where, f"unknown name '{n.id}' in {text!r} (known: "
                                  f"{', '.join(sorted(names))})")
            return names[n.id]
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            a, b = ev(n.left), ev(n.right)
            try:
                r = _BINOPS[type(n.op)](a, b)
            except ZeroDivisionError:
                raise fail(where, f"division by zero in {text!r}") from None
            if isinstance(n.op, ast.Div) and isinstance(a, int) and isinstance(b, int) \
                    and a % b == 0:
                r = a // b
            return r
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            v = ev(n.operand)
            return -v if isinstance(n.op, ast.USub) else v
        raise fail(where, f"unsupported syntax in expression {text!r} "
                          "(only numbers, names and + - * / // % **)")

    return ev(tree)
