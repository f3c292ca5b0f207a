"""Compiled Cython kernels (sources in the repository's ``kernels/`` folder).

Every public kernel validates dtype, shape and contiguity and raises ValueError
on bad input; the hot loops run without the GIL.
"""
