"""Safe Python identifiers for names taken from a spec.

Spec names are ASCII identifiers, but they may be Python keywords (`lambda`), shadow the
generated module's globals (`tl`, `triton`, `torch`), or be very long. A spec name never
reaches the generated code raw: it always gets a prefix that says what it is (so it can be
neither a keyword nor a module global), and a long name is shortened with a hash suffix.
In string literals (error messages, output dict keys) names are written with `repr`.
"""
from __future__ import annotations

import hashlib
import re

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*")
MAX_LEN = 24

#: prefix per kind of name; generated temporaries never start with one of these
PREFIX = {
    "tensor": "t_",     # a computed tensor (statement value)
    "carry": "c_",      # a running (loop-carried) tensor
    "input": "in_",     # an input's pointer argument
    "output": "out_",   # an output's pointer argument
    "load": "ld_",      # a tile loaded from an input
    "param": "a_",      # a param
    "extent": "n_",     # a rank's extent
    "var": "i_",        # a rank variable's coordinates
    "block": "BLK_",    # a rank variable's block size (constexpr)
    "stride": "s_",     # a stride argument
    "presence": "pm_",  # multi-kernel path: a scratch tensor's presence mask (int8)
    "scratch": "ws_",   # split-K: a running tensor's partial states (f32 scratch)
}


class Namer:
    """Maps (kind, spec name) to unique identifiers, deterministically."""

    def __init__(self):
        self._map: dict[tuple[str, str], str] = {}
        self._used: set[str] = set()

    def __call__(self, kind: str, name: str) -> str:
        key = (kind, name)
        if key in self._map:
            return self._map[key]
        base = name if _IDENT.fullmatch(name) else re.sub(r"[^A-Za-z0-9]", "x", name).strip("x")
        base = re.sub(r"_+", "_", base) or "x"
        if len(base) > MAX_LEN or base != name:
            digest = hashlib.sha1(name.encode()).hexdigest()[:8]
            base = f"{base[:MAX_LEN - 9]}_{digest}"
        ident = PREFIX[kind] + base
        n = 2
        while ident in self._used:
            ident = f"{PREFIX[kind]}{base}_{n}"
            n += 1
        self._used.add(ident)
        self._map[key] = ident
        return ident
