"""Lightning stages: proxy tasks, M&M tuning, segmentation fine-tuning.

Importing this package is cheap (no Lightning), so ``mnm --help`` stays fast: the stage modules load on use.
"""

#: the stage-kind registry: stage command -> LightningModule class path. A new kind adds one line here;
#: everything else the runner and reports need to know about it is a class attribute of its stage.
STAGES: dict[str, str] = {
    "classify": "mnm.stages.classify.ClassifyStage",
    "cluster": "mnm.stages.cluster.ClusterStage",
    "colorize": "mnm.stages.colorize.ColorizeStage",
    "jigsaw": "mnm.stages.jigsaw.JigsawStage",
    "mix-match": "mnm.stages.mix_match.MixMatchStage",
    "pixel-contrast": "mnm.stages.pixel_contrast.PixelContrastStage",
    "segment": "mnm.stages.segment.SegmentStage",
    "semi": "mnm.stages.semi.SemiStage",
}


def stage_class(stage: str) -> type:
    """The LightningModule class of a stage kind (imported now); unknown names list the known ones."""
    import importlib

    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known stages: {', '.join(sorted(STAGES))}")
    module, _, name = STAGES[stage].rpartition(".")
    return getattr(importlib.import_module(module), name)
