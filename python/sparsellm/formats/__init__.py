"""Sparse weight formats: host encoders (C++) and independent numpy decoders.

The decoders exist only to test the encoders and the kernels; they share no
code with them."""
from sparsellm.formats.tiled_csl import decode_tiled_csl, encode_tiled_csl

__all__ = ["decode_tiled_csl", "encode_tiled_csl"]
