"""Real JAX kernels, one-to-one with `costmodel`, timed correctly and swept into a tidy dataset.

Importing this package imports no JAX; `measure.kernels`, `measure.timing` and the CLIs do.
"""
