"""The Triton target: `prog.compile(target="triton")` and `einsumc compile --target triton`.

    fn = prog.compile(target="triton")
    out = fn(Q=q, K=k, V=v)          # torch tensors (any strides; f16, bf16 or f32)
    out["O"]                         # a torch tensor on the inputs' device

On CUDA tensors the generated kernel runs on the GPU (autotuned over a small config
space); on CPU tensors it runs in Triton's interpreter, with a one-line notice: the same
kernel, never a dense fallback.
"""
from __future__ import annotations

import warnings

from ...diagnostics import EinsumcError, error
from ...ir.program import Program
from .lower import DEFAULT, INTERPRET_CONFIG, Config, Lowering, _lowerable, prepare


class TritonInterpreterNotice(UserWarning):
    """Emitted once per compiled program when it runs in Triton's interpreter on the CPU."""


def generate(program: Program, config: Config = DEFAULT) -> tuple[str, Lowering]:
    """The standalone module text of a cascade, and its lowering."""
    _check_dtypes(program)
    why = _lowerable(program)
    if why is not None and not config.opt:  # the cascade as written: one kernel per group
        return _multipass(program, config, f"as written: {why}")
    try:
        lowered, how = prepare(program, tile=config.tile)
    except EinsumcError as exc:
        # no one-loop form: the multi-kernel path, or both reasons when it cannot either
        try:
            return _multipass(program, config, f"no one-loop form: {why}")
        except EinsumcError as exc2:
            raise EinsumcError(list(exc.diagnostics) + list(exc2.diagnostics),
                               program.source) from None
    low = Lowering(lowered, how, original=program)
    ks = low.build()
    kernels = {"main": ks}
    low.split_why = low.split_k()
    if low.split_why is None:  # split-K (flash-decoding): a split kernel and a merge kernel
        kernels["split"] = low.build(mode="split")
        kernels["merge"] = low.build(mode="merge")
    low.kernels = kernels
    from .emit import emit_module
    return emit_module(low, ks, original=program), low


def _multipass(program: Program, config: Config, why: str):
    from .multipass import MultiLowering, emit_multipass
    ml = MultiLowering(program, why)
    return emit_multipass(ml, config), ml


def _check_dtypes(program: Program):
    for d in program.inputs + program.outputs:
        if d.dtype == "f64":
            raise EinsumcError([error(f"triton backend: '{d.name}' is declared f64; the Triton "
                                      "backend supports f16, bf16 and f32", d.span)],
                               program.source)


class TritonProgram:
    """A compiled cascade: call it with inputs (torch tensors) and run-time params by keyword.

    Returns a dict of output tensors (declared dtypes) on the inputs' device. Options:
    `config` (a `Config`: rows per program, warps, stages, tf32), used as given instead of
    autotuning on the GPU.
    """

    target = "triton"

    def __init__(self, program: Program, config: Config | None = None):
        self.program = program
        self.config = config
        self.source, self.lowering = generate(program, config or DEFAULT)
        self._noticed = False

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.program.inputs)

    @property
    def params(self) -> tuple[str, ...]:
        return self.program.runtime_params

    def module(self, interpret: bool):
        from . import loader
        return loader.load(self.source, interpret)

    def __call__(self, **kwargs):
        import torch
        tensors = [v for k, v in kwargs.items() if k in self.inputs and isinstance(v, torch.Tensor)]
        on_gpu = bool(tensors) and all(t.is_cuda for t in tensors)
        if not on_gpu and any(t.is_cuda for t in tensors):
            raise EinsumcError([error("triton backend: inputs are on different devices")],
                               self.program.source)
        interpret = not on_gpu
        if interpret and not self._noticed:
            self._noticed = True
            warnings.warn("einsumc: no GPU tensors; running the generated Triton kernel in "
                          "Triton's interpreter on the CPU (same kernel, slow; pass CUDA tensors "
                          "to run on a GPU)", TritonInterpreterNotice, stacklevel=2)
        mod = self.module(interpret)
        cfg = self.config or (INTERPRET_CONFIG if interpret else None)
        opts = {}
        if cfg is not None:
            opts = dict(block_r=cfg.block_r, num_warps=cfg.num_warps,
                        num_stages=cfg.num_stages, tf32=cfg.tf32, split=cfg.split)
        try:
            if interpret:  # NumPy evaluates both sides of every tl.where: quiet its warnings
                import numpy as np
                with np.errstate(all="ignore"):
                    return mod.launch(kwargs, interpret=True, autotune=False, **opts)
            return mod.launch(kwargs, interpret=False, autotune=None if cfg is None else False,
                              **opts)
        except mod.EinsumcLaunchError as exc:
            raise EinsumcError([error(str(exc))], self.program.source) from None

    def __repr__(self) -> str:
        name = self.program.source.name if self.program.source else "<spec>"
        return f"<einsumc triton program {name}: inputs {', '.join(self.inputs)}>"


class TritonTarget:
    name = "triton"

    def compile(self, program: Program, config: Config | None = None) -> TritonProgram:
        return TritonProgram(program, config)

    def emit(self, program: Program, config: Config | None = None) -> str:
        return generate(program, config or DEFAULT)[0]
