"""Running stages: pipeline files, the runner, run folders and their locks, the stage CLI, callbacks, interrupts, the W&B mode.

Rule: Imports the stages, the data modules and the core packages; never mnm.experiments or mnm.commands.
"""
