"""Figures that run the models of a finished run: predictions on val images, and t-SNE of patch embeddings before and after M&M."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnm.datamodules.datasets import pad_collate
from mnm.experiments.figures import pyplot
from mnm.runs.rundir import StageDir
from mnm.runs.stage_cli import load_stage

MAX_VAL_PASSES = 10  # t-SNE: at most this many passes over the val split to collect the patches


def _val_batches(datamodule: Any) -> Any:
    datamodule.setup("validate")
    return iter(datamodule.val_dataloader())


def colourise(labels: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """H×W class ids -> H×W×3 uint8; ignore (and anything out of range) is white."""
    lab = labels.numpy()
    out = np.full((*lab.shape, 3), 255, dtype=np.uint8)
    ok = lab < len(palette)
    out[ok] = palette[lab[ok]]
    return out


@torch.no_grad()
def plot_samples(run_dir: Path, arms: Mapping[str, str], num: int, out: Path, kinds: Mapping[str, str]) -> Path:
    """Rows of val image, ground truth and each arm's prediction (data module's palette; ignore is white); ``kinds``
    gives each stage's kind."""
    plt = pyplot()
    models = {label: load_stage(run_dir, stage, kind=kinds[stage]) for label, stage in arms.items()}
    _, dm = next(iter(models.values()))
    dm.setup("validate")
    val = dm.datasets["val"]  # images spread over the split (video frames in a row look alike)
    batch = pad_collate([val[int(i)] for i in np.linspace(0, len(val) - 1, min(num, len(val))).round()])
    image, mask = batch["image"], batch["mask"]
    palette = np.array(dm.palette, dtype=np.uint8)
    preds = {label: m.predict_probs(image).argmax(1) for label, (m, _) in models.items()}
    cols = ["image", "ground truth", *arms]
    fig, axes = plt.subplots(len(image), len(cols), figsize=(2.2 * len(cols), 2.2 * len(image)), squeeze=False)
    for r in range(len(image)):
        panels = [image[r].permute(1, 2, 0).numpy(), colourise(mask[r], palette)]
        panels += [colourise(p[r], palette) for p in preds.values()]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(cols[c], fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[i] / 255) for i in range(len(palette))]
    fig.legend(handles, dm.class_names, loc="lower center", ncol=min(len(palette), 11), fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _val_patches(model: Any, datamodule: Any, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num`` labelled patches mixed (``model.mix``) from val images; a small split is passed over again."""
    patches, labels, count = [], [], 0
    for _ in range(MAX_VAL_PASSES):
        for batch in _val_batches(datamodule):
            mixed = model.mix(batch, generator)
            patches.append(mixed.patches)
            labels.append(mixed.labels)
            count += len(mixed.labels)
            if count >= num:
                return torch.cat(patches)[:num], torch.cat(labels)[:num]
    return torch.cat(patches), torch.cat(labels)


@torch.no_grad()
def tsne_embeddings(run_dir: Path, before: str | None, after: str, num_patches: int, seed: int,
                    kind: str) -> dict[str, Any]:
    """The same val patches embedded (L2-normalised pool5) before and after M&M, and their t-SNE maps.

    ``before`` is a stage whose final weights the M&M stage started from, or
    ``None`` for the M&M stage's own seeded random initialisation; ``kind`` is the M&M stage's kind.
    """
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    from mnm.weights.formats import load_backbone_weights

    tuned, dm = load_stage(run_dir, after, kind=kind)
    initial, _ = load_stage(run_dir, after, weights=False, kind=kind)
    if before is not None:
        load_backbone_weights(initial.backbone, str(StageDir.of(run_dir, before).final_checkpoint))
    x, y = _val_patches(tuned, dm, num_patches, torch.Generator().manual_seed(seed))
    y = y.numpy()
    result: dict[str, Any] = {"labels": y, "class_names": dm.class_names, "palette": dm.palette}
    for key, model in (("before", initial), ("after", tuned)):
        emb = torch.cat([model.backbone.embed(chunk) for chunk in x.split(128)])
        emb = torch.nn.functional.normalize(emb, dim=1).numpy()
        perplexity = min(30.0, (len(emb) - 1) / 3)
        with threadpool_limits(1):  # Barnes-Hut with OpenMP threads crawls on a busy CPU; one thread is fast
            result[key] = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)
        multi = len(set(y.tolist())) > 1
        result[f"silhouette_{key}"] = float(silhouette_score(emb, y, metric="euclidean")) if multi else math.nan
    return result


def plot_tsne(tsne: Mapping[str, Any], titles: tuple[str, str], out: Path) -> Path:
    """Two t-SNE panels (before / after M&M) coloured by the patches' classes."""
    plt = pyplot()
    palette = np.array(tsne["palette"], dtype=float) / 255
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, key, title in zip(axes, ("before", "after"), titles, strict=True):
        for cls in sorted(set(tsne["labels"].tolist())):
            pts = tsne[key][tsne["labels"] == cls]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, color=palette[cls], label=tsne["class_names"][cls])
        ax.set_title(f"{title}\n(silhouette {tsne[f'silhouette_{key}']:.3f})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
