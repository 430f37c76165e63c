"""Sparse weight formats: host encoders (C++) and independent numpy decoders.

The decoders exist only to test the encoders and the kernels; they share no
code with them."""
from sparsellm.formats.bitmap import decode_bitmap, encode_bitmap
from sparsellm.formats.split24 import decode_split24, encode_split24
from sparsellm.formats.tiled_csl import decode_tiled_csl, encode_tiled_csl

__all__ = [
    "decode_bitmap", "decode_split24", "decode_tiled_csl", "encode_bitmap", "encode_split24", "encode_tiled_csl",
]
