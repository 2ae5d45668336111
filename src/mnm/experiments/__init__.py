"""What uses finished runs: reports (collect, figures, Markdown), benchmarks, protocols, unsupervised arms, comparisons, predictions, ensembles, speed and GPU checks.

Rule: Imports mnm.runs and everything below it; never mnm.commands.
"""
