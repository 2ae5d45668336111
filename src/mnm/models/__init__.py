"""The networks: backbones (architectures), heads, evaluation views, parameter groups.

Rule: Imports mnm.utils only; plain torch, no Lightning.
"""
