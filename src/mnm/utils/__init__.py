"""Small helpers every layer uses: repository paths, files written atomically, error texts, provenance, random integers, phase timers, library-message filters.

Rule: Imports nothing of mnm.
"""
