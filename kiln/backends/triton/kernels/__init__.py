"""Triton kernels, one module per archetype."""
