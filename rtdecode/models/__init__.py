"""Decoder models (SemVideo SAD; MAD to come) and their training."""
