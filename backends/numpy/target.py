"""The NumPy target: compile a program to a callable, or emit a standalone NumPy module."""
from __future__ import annotations

import functools

from ...diagnostics import EinsumcError, Source, Span, error
from ...ir.program import Program
from . import runtime
from .lower import lower


class NumpyProgram:
    """A compiled cascade: call it with inputs and run-time params as keyword arguments.

    Inputs may be NumPy arrays (any float dtype, ml_dtypes bf16 included) or torch tensors;
    computation is in f32 (f64 when the spec declares an f64 tensor). Returns a dict of
    output arrays in their declared dtypes, absent points read as 0.
    """

    target = "numpy"

    def __init__(self, program: Program):
        self.program = program
        self.plan = lower(program)

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.program.inputs)

    @property
    def params(self) -> tuple[str, ...]:
        return self.program.runtime_params

    def __call__(self, **kwargs):
        names = {d.name for d in self.program.inputs}
        inputs = {k: v for k, v in kwargs.items() if k in names}
        params = {k: v for k, v in kwargs.items() if k not in names}
        try:
            return runtime.run_plan(self.plan, {**inputs, **{k: v for k, v in params.items()
                                                           if k not in self.params}},
                                    {k: v for k, v in params.items() if k in self.params})
        except runtime.EinRuntimeError as exc:
            raise runtime_error(exc, self.program.source) from None

    def __repr__(self) -> str:
        name = self.program.source.name if self.program.source else "<spec>"
        return f"<einsumc numpy program {name}: inputs {', '.join(self.inputs)}>"


def runtime_error(exc: runtime.EinRuntimeError, source: Source | None) -> EinsumcError:
    span = None
    if exc.span is not None and source is not None:
        line, col, start, end = exc.span
        span = Span(source.name, line, col, start, end)
    return EinsumcError([error(exc.message, span)], source)


class NumpyTarget:
    name = "numpy"

    def compile(self, program: Program) -> NumpyProgram:
        return NumpyProgram(program)

    def emit(self, program: Program) -> str:
        from .emit import emit_module
        return emit_module(program, lower(program))


@functools.lru_cache(maxsize=1)
def runtime_source() -> str:
    import inspect
    return inspect.getsource(runtime)
