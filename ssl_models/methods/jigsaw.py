"""Jigsaw puzzles: "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles"
(Noroozi & Favaro, ECCV 2016, arXiv:1603.09246).

Across workers: a per-image cross-entropy (each worker's local mean; their mean is the one-process
loss), BatchNorm synchronised by the engine. The permutation labels are drawn in ``views``, so they
are split with the views.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import (
    SSLMethod,
    SSLOutput,
    labels_from_view,
    labels_to_view,
)


def all_permutations(n: int) -> Tensor:
    """Every permutation of ``range(n)``: (n!, n) int8, built by inserting each new element at every
    position of the permutations of the previous ones (no Python loop over permutations)."""
    perms = torch.zeros(1, 1, dtype=torch.int8)
    for m in range(1, n):
        k = perms.shape[0]
        # insert m at position i of every permutation of range(m): (m + 1, k, m + 1)
        out = torch.empty(m + 1, k, m + 1, dtype=torch.int8)
        for i in range(m + 1):
            out[i, :, :i] = perms[:, :i]
            out[i, :, i] = m
            out[i, :, i + 1 :] = perms[:, i:]
        perms = out.reshape(-1, m + 1)
    return perms


@functools.lru_cache(maxsize=8)
def jigsaw_permutations(n_permutations: int = 100, n_tiles: int = 9, seed: int = 0) -> Tensor:
    """A fixed set of tile permutations far apart in Hamming distance (the paper's Algorithm 1:
    start from a random permutation, repeatedly add the one with the largest total distance to
    those chosen).

    Returns:
        (n_permutations, n_tiles) long; row i is the tile order of class i.
    """
    candidates = all_permutations(n_tiles)  # (n_tiles!, n_tiles)
    if not 1 <= n_permutations <= candidates.shape[0]:
        raise ValueError(f"n_permutations must be in [1, {candidates.shape[0]}], got {n_permutations}")
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(candidates.shape[0], (1,), generator=generator))]
    by_position = candidates.T.contiguous()  # (n_tiles, n_tiles!): faster to compare column-wise
    total = torch.zeros(candidates.shape[0], dtype=torch.long)
    for _ in range(n_permutations - 1):
        total += (by_position != candidates[chosen[-1]][:, None]).sum(0)  # Hamming distance to the newest
        total[chosen[-1]] = -(2**40)  # chosen ones stay out: later distances never lift them back
        chosen.append(int(total.argmax()))
    return candidates[chosen].long()


def random_tiles(
    x: Tensor, grid: int = 3, tile_fraction: float = 0.75, generator: torch.Generator | None = None
) -> Tensor:
    """Cut each image into a ``grid`` x ``grid`` array of cells and take a randomly placed tile of
    side ``tile_fraction`` of each cell (the gaps stop the network matching edges; paper: 64 of 85).

    Args:
        x: (N, C, H, W).

    Returns:
        (N, grid * grid, C, t, t) tiles in row-major order.
    """
    n, c, h, w = x.shape
    cell = min(h, w) // grid
    t = max(1, round(tile_fraction * cell))
    k = grid * grid
    offset_y = torch.randint(0, cell - t + 1, (n, k), generator=generator, device=x.device)
    offset_x = torch.randint(0, cell - t + 1, (n, k), generator=generator, device=x.device)
    cells = torch.arange(k, device=x.device)
    rows = ((cells // grid) * cell + offset_y)[..., None] + torch.arange(t, device=x.device)  # (N, k, t)
    cols = ((cells % grid) * cell + offset_x)[..., None] + torch.arange(t, device=x.device)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    # advanced indices around a slice go first: (N, k, t, t, C)
    tiles = x[batch, :, rows[..., :, None], cols[..., None, :]]
    return tiles.permute(0, 1, 4, 2, 3)


class Jigsaw(SSLMethod):
    """Shuffle the ``grid`` x ``grid`` tiles of an image by one of a fixed set of permutations; a
    shared encoder embeds each tile, and an MLP on the concatenated embeddings classifies the
    permutation.

    Args:
        encoder: normalization + backbone (it sees tiles: about a quarter of the image side).
        augment: the view generator (one view per image).
        grid: tiles per side. The paper's 3 x 3 is for 225-px images (64-px tiles); on 28-px
            images it leaves 7-px tiles, too small for what the encoder learns to carry over to
            whole images (kNN 0.7446 after 90 s, vs 0.7876 with 2 x 2 and its 10-px tiles;
            random-init 0.7445). Set 3 for images of ~64 px and more.
        n_permutations: size of the permutation set (paper: 1000 of 9!; it reports 100 close
            behind). Default: 100, or all ``(grid * grid)!`` when there are fewer (24 for 2 x 2).
        tile_fraction: tile side as a fraction of its cell (paper: 64 / 85).
        hidden_dim: hidden width of the classifier (the paper's fc7: 4096).
    """

    name = "jigsaw"
    # paper: SGD lr 0.01; 0.06 for short runs
    optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        grid: int = 2,
        n_permutations: int | None = None,
        tile_fraction: float = 0.75,
        hidden_dim: int = 512,
    ) -> None:
        super().__init__(encoder, augment)
        self.grid, self.tile_fraction = grid, tile_fraction
        if n_permutations is None:
            n_permutations = min(100, math.factorial(grid * grid))
        self.register_buffer("permutations", jigsaw_permutations(n_permutations, self.grid**2).clone())
        self.classifier = ProjectionHead(self.grid**2 * encoder.out_dim, hidden_dim, n_permutations, num_layers=2)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """The tiles of one view of each image, in row-major order: ``grid**2`` tensors (N, C, t, t),
        then each image's random permutation class as an (N, 1, 1, 1) batch (``labels_to_view``)."""
        tiles = random_tiles(self.augment(images, generator), self.grid, self.tile_fraction, generator)
        n = tiles.shape[0]
        labels = torch.randint(self.permutations.shape[0], (n,), generator=generator, device=tiles.device)
        return [tile.contiguous() for tile in tiles.unbind(1)] + [labels_to_view(labels)]

    def forward(self, views: list[Tensor]) -> SSLOutput:
        tiles = torch.stack(views[:-1], dim=1)  # (N, k = grid**2, C, t, t)
        n, k = tiles.shape[:2]
        labels = labels_from_view(views[-1]).to(tiles.device)
        order = self.permutations[labels]  # (N, k): position j shows tile order[j]
        shuffled = tiles.gather(1, order.view(n, k, 1, 1, 1).expand_as(tiles))
        h = self.encoder(shuffled.flatten(0, 1)).view(n, k, -1)  # (N, k, out_dim)
        loss = F.cross_entropy(self.classifier(h.flatten(1)).float(), labels)
        return SSLOutput(loss, embedding=h.mean(1).detach())
