"""Derivatives of convolution, pooling and resampling ops (filled in below)."""
