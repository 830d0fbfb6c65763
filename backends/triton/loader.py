"""Generated modules on disk, imported for the GPU (JIT) or for Triton's interpreter.

A module's text is written once under the cache directory (`$EINSUMC_CACHE_DIR`, default
`~/.cache/einsumc/triton`), named by a hash of its text, which covers the spec, the lowered
cascade, the config and the backend version; Triton keeps its own on-disk cache of
compiled kernels keyed by source, dtypes and constexprs. Extents are kernel arguments that
are never specialized, so a new sequence length does not recompile.

Interpreter isolation: Triton decides at decoration time whether `@triton.jit` makes an
interpreted function. The interpreted copy of a module is imported with TRITON_INTERPRET=1
set only for the duration of that import (under a lock) and restored afterwards; the
module uses only builtins of `triton.language` and its own helpers, so no other Triton
code in the process is switched into interpreter mode.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from pathlib import Path

_LOCK = threading.Lock()
_MODULES: dict[tuple[str, bool], object] = {}


def cache_dir() -> Path:
    d = os.environ.get("EINSUMC_CACHE_DIR")
    path = Path(d) if d else Path.home() / ".cache" / "einsumc"
    return path / "triton"


def module_path(text: str) -> Path:
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"einsumc_{key}.py"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def load(text: str, interpret: bool):
    """The module of `text`, imported for the interpreter or for the GPU (cached)."""
    key = (hashlib.sha256(text.encode()).hexdigest(), interpret)
    with _LOCK:
        if key in _MODULES:
            return _MODULES[key]
        path = module_path(text)
        name = f"einsumc_triton_{key[0][:20]}_{'interp' if interpret else 'jit'}"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        try:
            if interpret:
                import triton  # noqa: F401  (imported for the GPU first)
                try:  # imported lazily by launches; import it outside interpreter mode
                    import triton.experimental.gluon  # noqa: F401
                except Exception:  # pragma: no cover - optional in other triton versions
                    pass
                old = os.environ.get("TRITON_INTERPRET")
                os.environ["TRITON_INTERPRET"] = "1"
                try:
                    spec.loader.exec_module(mod)
                finally:
                    if old is None:
                        os.environ.pop("TRITON_INTERPRET", None)
                    else:
                        os.environ["TRITON_INTERPRET"] = old
            else:
                spec.loader.exec_module(mod)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _MODULES[key] = mod
        return mod
