"""Jigsaw-puzzle proxy stage (Noroozi & Favaro 2016): classify which permutation shuffled 3×3 tiles."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mnm.methods.jigsaw import JigsawHead, jigsaw_tiles, maximal_hamming_permutations
from mnm.stages.base import BaseStage


class JigsawStage(BaseStage):
    """Shared backbone over 9 tiles + permutation classifier + cross-entropy; logs loss and accuracy.

    The permutation set (maximal Hamming distance, generated deterministically
    from ``permutation_seed``) is a buffer of the module, so it is stored in
    every checkpoint of the run.

    Args:
        num_permutations: size of the permutation set (e.g. 100 or 1000).
        permutation_seed: seed of the greedy permutation selection.
        tile: tile side in pixels (the crop is ``3·(tile+gap)``).
        **kwargs: backbone and optimiser settings of :class:`BaseStage`.
    """

    default_max_steps = 100_000

    def __init__(
        self,
        num_permutations: int = 100,
        permutation_seed: int = 0,
        tile: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.register_buffer("permutations", maximal_hamming_permutations(num_permutations, seed=permutation_seed))
        self.head = JigsawHead(self.backbone.embed_dim((tile, tile)), num_permutations=num_permutations)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        """Permutation logits for ``B×9×C×t×t`` tiles (per-tile normalised)."""
        b, n = tiles.shape[:2]
        flat = tiles.flatten(0, 1)
        # jigsaw_tiles already normalised each tile; undo the backbone's own normalisation
        flat = flat * self.backbone.std + self.backbone.mean
        return self.head(self.backbone.embed(flat).view(b, n, -1))

    def _step(self, batch: dict[str, Any], generator: torch.Generator, prefix: str) -> torch.Tensor:
        image = batch["image"]
        target = torch.randint(0, len(self.permutations), (len(image),), generator=generator).to(image.device)
        tiles = jigsaw_tiles(image, self.permutations, target, tile=self.hparams.tile, generator=generator)
        logits = self(tiles)
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(1) == target).float().mean()
        self.log_scalars(prefix, {"loss": loss, "acc": acc}, prog_bar=prefix == "train", batch_size=len(image))
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.training_generator(batch_idx), "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, self.step_generator(batch_idx, salt=1), "val")
