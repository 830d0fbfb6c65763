"""The Triton backend: fused GPU kernels generated from cascades (issue #5)."""
