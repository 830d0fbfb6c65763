"""The spatial target: schedules and costs of a cascade on a spatial-array accelerator.

    prog = einsumc.load("examples/fusemax/cascade5_1pass.ein")
    t = SpatialTarget()
    print(t.emit_schedule(prog, "examples/fusemax/arch/fusemax.yaml",
                          "examples/fusemax/mappings/fusemax.yaml", "text",
                          {"M": 65536, "P": 65536, "B": 64, "H": 12}))
    r = t.simulate(prog, arch, mapping, shapes)      # r.latency_s, r.util_2d, r.energy_pj ...

It does not produce a callable: `compile` and the plain `emit` (no architecture) explain how
to use it instead.
"""
from __future__ import annotations

from pathlib import Path

from ...diagnostics import EinsumcError, error
from .arch import Architecture, load_arch
from .cascade import cascade_model
from .mapping import Mapping, load_mapping
from .model import Result, evaluate

FORMATS = ("text", "json", "timeloop")
#: extent given to a symbolic rank when a schedule is asked for without shapes
DEFAULT_EXTENT = 4096


def _arch(arch) -> Architecture:
    if isinstance(arch, Architecture):
        return arch
    if arch is None:
        raise EinsumcError([error("the spatial target needs an architecture file: "
                                  "--arch ARCH.yaml (e.g. examples/fusemax/arch/fusemax.yaml)")])
    return load_arch(arch)


def _mapping(mapping) -> Mapping:
    if isinstance(mapping, Mapping):
        return mapping
    return load_mapping(mapping)


def default_shapes(program, shapes: dict | None) -> tuple[dict, list[str]]:
    """The given shapes, plus DEFAULT_EXTENT for every symbolic rank left out."""
    shapes = dict(shapes or {})
    notes = []
    for r in program.ranks:
        if r.extent is None and r.name not in shapes:
            shapes[r.name] = DEFAULT_EXTENT
            notes.append(r.name)
    return shapes, notes


class SpatialTarget:
    name = "spatial"

    def compile(self, program):
        raise EinsumcError([error("the spatial target emits schedules and costs, not a callable: "
                                  "use `einsumc compile SPEC --target spatial --arch ARCH` or "
                                  "`einsumc simulate SPEC --arch ARCH --shape ...`")],
                           program.source)

    def emit(self, program, arch=None, mapping=None, fmt: str = "text",
             shapes: dict | None = None) -> str:
        """The schedule as text; an architecture is required (`--arch`)."""
        if arch is None:
            raise EinsumcError([error("the spatial target needs an architecture: "
                                      "`einsumc compile SPEC --target spatial --arch ARCH.yaml "
                                      "[--mapping MAP.yaml] [--emit text|json|timeloop]` "
                                      "(examples/fusemax/arch/ has FuseMax and FLAT)")],
                               program.source)
        return self.emit_schedule(program, arch, mapping, fmt, shapes)

    def simulate(self, program, arch, mapping=None, shapes: dict | None = None) -> Result:
        """Latency, utilization, traffic, buffer occupancy and energy (a `Result`)."""
        a, m = _arch(arch), _mapping(mapping)
        return evaluate(cascade_model(program), a, m, dict(shapes or {}))

    def emit_schedule(self, program, arch, mapping=None, fmt: str = "text",
                      shapes: dict | None = None) -> str:
        """The schedule (`text` or `json`), or Timeloop problems (`timeloop`: the files
        concatenated as one multi-document YAML; see `timeloop_files`)."""
        if fmt not in FORMATS:
            raise EinsumcError([error(f"--emit {fmt}: expected one of {', '.join(FORMATS)}")])
        if fmt == "timeloop":
            files = self.timeloop_files(program, shapes, arch, mapping)
            return "".join(("---\n" if i else "") + t for i, t in enumerate(files.values()))
        from .report import to_json, to_text
        a, m = _arch(arch), _mapping(mapping)
        cm = cascade_model(program)
        full, defaulted = default_shapes(program, shapes)
        r = evaluate(cm, a, m, full)
        if defaulted:
            r.notes.insert(0, f"{', '.join(defaulted)} = {DEFAULT_EXTENT} by default "
                              "(pass --shape to choose)")
        return to_json(r, cm, a) + "\n" if fmt == "json" else to_text(r, cm, a)

    def timeloop_files(self, program, shapes: dict | None = None, arch=None,
                       mapping=None) -> dict[str, str]:
        """{file name: Timeloop v0.4 problem YAML}, one per computing Einsum; with an
        architecture, partition extents are those of the mapping (M0 = rows)."""
        from .model import INSTANCE_NAMES, _tile_sizes, derive_plan, resolve_extents
        from .timeloop import timeloop_problems
        cm = cascade_model(program)
        full, _ = default_shapes(program, shapes)
        inst = {k: int(v) for k, v in full.items() if k in INSTANCE_NAMES and k not in cm.ranks}
        rest = {k: v for k, v in full.items() if k not in inst}
        tiles = {}
        if arch is not None:
            a, m = _arch(arch), _mapping(mapping)
            tiles = _tile_sizes(cm, a, m, derive_plan(cm, a, m), rest)
        ext, _, _ = resolve_extents(cm, rest, tiles)
        return timeloop_problems(program, cm, ext, inst)


def write_timeloop(files: dict[str, str], out: str | Path) -> list[Path]:
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        p = d / name
        p.write_text(text)
        paths.append(p)
    return paths
