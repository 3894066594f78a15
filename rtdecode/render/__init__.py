"""Conditional video rendering (CVR), multi-fMRI fusion and video output."""
