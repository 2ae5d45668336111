"""Lightning stages: proxy tasks, M&M tuning, segmentation fine-tuning."""
