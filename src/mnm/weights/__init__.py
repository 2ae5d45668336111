"""Weights on disk: checkpoint files, the backbone record, weight formats, the Caffe reader and mapping.

Rule: Imports mnm.models and mnm.utils; plain torch, no Lightning.
"""
