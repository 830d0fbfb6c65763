"""The spatial target (being built: issue #6)."""
from __future__ import annotations

from ...diagnostics import EinsumcError, error


class SpatialTarget:
    name = "spatial"

    def compile(self, program):
        raise EinsumcError([error("the spatial target emits schedules and costs, not a callable: "
                                  "use `einsumc compile --target spatial --arch ARCH` or "
                                  "`einsumc simulate`")], program.source)

    def emit(self, program):
        raise EinsumcError([error("the spatial target is not built yet (issue #6)")], program.source)
