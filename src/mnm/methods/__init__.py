"""What each method computes: mix (patch sampling), match (triplet samplers), losses, the proxy tasks' parts (colorization, jigsaw), clustering, masked image modelling, semi-supervised parts.

Rule: Imports mnm.models and mnm.utils; plain torch, no Lightning.
"""
