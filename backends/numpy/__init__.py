"""The NumPy reference backend: the executable definition of the language's semantics."""
