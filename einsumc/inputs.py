"""Inputs for `einsumc run` and `bench`: extents from `--shape`, random arrays, `.npz` files."""
from __future__ import annotations

import numpy as np

from .diagnostics import EinsumcError, error
from .ir.program import Program
from .ir.symbolic import evaluate


def resolve_extents(prog: Program, given: dict[str, int]) -> dict[str, int]:
    """Every rank's extent from the given ones and the declarations (derived ones computed)."""
    names = {r.name for r in prog.ranks}
    for k in given:
        if k not in names:
            raise EinsumcError([error(f"--shape names '{k}', which is not a rank of this spec; "
                                      f"ranks: {', '.join(sorted(names))}")], prog.source)
    ext: dict[str, int] = {}
    for _ in range(len(prog.ranks) + 1):
        progress = False
        for r in prog.ranks:
            if r.name in ext:
                continue
            if r.extent is None:
                if r.name in given:
                    ext[r.name] = given[r.name]
                    progress = True
                continue
            try:
                v = evaluate(r.extent, ext, {})
            except KeyError:
                continue
            except ZeroDivisionError:
                raise EinsumcError([error(f"extent of rank {r.name} divides by zero", r.span)],
                                   prog.source) from None
            if not isinstance(v, int) or v < 0:
                raise EinsumcError([error(
                    f"rank {r.name} evaluates to {v}, not a non-negative integer, with "
                    + ", ".join(f"{k} = {n}" for k, n in sorted(ext.items())), r.span)],
                    prog.source)
            if r.name in given and given[r.name] != v:
                raise EinsumcError([error(f"--shape gives {r.name} = {given[r.name]}, but its "
                                          f"declaration gives {v}", r.span)], prog.source)
            ext[r.name] = v
            progress = True
        if not progress:
            break
    needed = {prog.rank_of_var(v).name for d in prog.inputs for v in d.indices}
    missing = sorted(n for n in needed if n not in ext)
    if missing:
        raise EinsumcError([error("the extents of " + ", ".join(missing) + " are needed to make "
                                  "inputs: pass --shape " + ",".join(f"{m}=N" for m in missing))],
                           prog.source)
    return ext


def numpy_dtype(name: str):
    if name == "f16":
        return np.float16
    if name == "bf16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    if name == "f64":
        return np.float64
    return np.float32


def random_inputs(prog: Program, shapes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal inputs of the declared shapes and dtypes (deterministic in `seed`)."""
    ext = resolve_extents(prog, shapes)
    rng = np.random.default_rng(seed)
    out = {}
    for d in prog.inputs:
        shape = tuple(ext[prog.rank_of_var(v).name] for v in d.indices)
        a = rng.standard_normal(shape, dtype=np.float32 if d.dtype != "f64" else np.float64)
        out[d.name] = a.astype(numpy_dtype(d.dtype), copy=False)
    return out


def load_npz(prog: Program, path: str) -> dict[str, np.ndarray]:
    try:
        data = np.load(path)
    except (OSError, ValueError) as exc:
        raise EinsumcError([error(f"cannot read inputs from {path}: {exc}")], prog.source) from None
    names = [d.name for d in prog.inputs]
    missing = [n for n in names if n not in data.files]
    if missing:
        raise EinsumcError([error(f"{path} lacks input(s) {', '.join(missing)}")], prog.source)
    return {n: data[n] for n in names}
