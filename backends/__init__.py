"""Backends: a lazy registry of targets (name -> factory), so that `--target numpy` never
imports the GPU stack.

A target compiles a checked `Program` into a callable (`compile`) and, where it can, into
source text (`emit`).
"""
from __future__ import annotations

import importlib

#: target name -> (module, class); imported only when the target is asked for
_TARGETS = {
    "numpy": ("einsumc.backends.numpy.target", "NumpyTarget"),
    "spatial": ("einsumc.backends.spatial.target", "SpatialTarget"),
    "triton": ("einsumc.backends.triton.target", "TritonTarget"),
}
#: targets that are planned but not built yet, with the issue that builds them
PLANNED: dict[str, str] = {}


def available_targets() -> list[str]:
    return sorted(_TARGETS)


def get_target(name: str):
    """The target object for `name`; raises KeyError with the choices for an unknown one."""
    if name not in _TARGETS:
        if name in PLANNED:
            raise KeyError(f"target '{name}' is not implemented yet: {PLANNED[name]}; "
                           f"available targets: {', '.join(available_targets())}")
        raise KeyError(f"unknown target '{name}'; available targets: "
                       + ", ".join(available_targets()))
    module, cls = _TARGETS[name]
    return getattr(importlib.import_module(module), cls)()
