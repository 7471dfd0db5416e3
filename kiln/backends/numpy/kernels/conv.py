"""Convolution, pooling and resampling kernels."""
