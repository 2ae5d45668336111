"""Scores: segmentation and classification metrics, Hungarian matching, the kNN and linear probes, paired statistics.

Rule: Imports mnm.methods, mnm.models and mnm.utils; plain torch, no Lightning.
"""
