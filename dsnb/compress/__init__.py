"""Compression: GPTQ and round-to-nearest weight quantization, 4-bit storage, magnitude pruning (notebook 09)."""
