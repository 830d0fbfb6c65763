"""einsumc: a compiler for attention written as cascades of extended Einsums.

    prog = einsumc.load("examples/fusemax/cascade5_1pass.ein")   # parse + check
    fn = prog.compile(target="numpy")
    out = fn(Q=q, K=k, V=v)                                        # {"AV": array}
"""
from .diagnostics import Diagnostic, EinsumcError, Span
from .driver import load
from .ir.program import Program

__version__ = "0.1.0"
__all__ = ["load", "Program", "EinsumcError", "Diagnostic", "Span", "__version__"]
