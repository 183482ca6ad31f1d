"""Compression stages: structured pruning (torch-pruning), BatchNorm folding and
INT8 quantization (NNCF), each a run directory that reloads without this code's
pruning or quantization state machinery."""
