"""The interface every SSL method implements, so one engine trains them all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder


def labels_to_view(labels: Tensor) -> Tensor:
    """Per-image integer labels (N,) as an (N, 1, 1, 1) float32 batch, so that they travel with the
    views: every view is an (N, C, H, W) float batch that the engine converts (memory format) and a
    distributed run splits by worker along dim 0. Exact for labels below 2^24."""
    return labels.to(torch.float32).view(-1, 1, 1, 1)


def labels_from_view(view: Tensor) -> Tensor:
    """The (N,) long labels of a ``labels_to_view`` batch."""
    return view.reshape(-1).round().long()


@dataclass
class SSLOutput:
    """What a training step returns: the loss and (optionally) embeddings to watch for collapse."""

    loss: Tensor
    embedding: Tensor | None = None


class SSLMethod(nn.Module):
    """Backbone (inside ``encoder``) + heads + loss.

    Subclasses set ``name``, build their heads in ``__init__`` and implement ``forward``. They may
    override ``views`` (how many views, which augmentation) and ``on_step_end`` (momentum updates,
    queues, schedules), which the engine calls after every optimizer step.

    Everything random or per-image that a step needs is drawn in ``views`` (from its generator) and
    returned as (N, ...) batches, ``forward`` draws nothing: a step is then a function of (seed,
    step), and a distributed run that splits the views by worker along dim 0 computes what one
    process computes on the whole batch (``ssl_models.dist`` says how each loss sees the global
    batch).

    Args:
        encoder: normalization + backbone; its weights are what pretraining produces.
        augment: the view generator (default: ``ViewAugment(**default_augment)``).
    """

    name: ClassVar[str] = ""
    #: ``ViewAugment`` arguments of the method's own views (its paper's); empty: SimCLR's views
    default_augment: ClassVar[dict[str, Any]] = {}
    #: the backbones (``ssl_models.backbones`` names) the method works with; None: any
    backbones: ClassVar[tuple[str, ...] | None] = None
    #: how it trains unless told otherwise: ``TrainConfig``'s optimizer, lr (for batch 256) and
    #: weight_decay, for small images and short schedules (each method says where its values come from)
    optim: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 5e-4}

    def __init__(self, encoder: Encoder, augment: ViewAugment | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.augment = augment or ViewAugment(**self.default_augment)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """Two random views of each image: (N, C, H, W) uint8 -> [(N, C, H', W')] * 2 float."""
        return [self.augment(images, generator), self.augment(images, generator)]

    def forward(self, views: list[Tensor]) -> SSLOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, images: Tensor) -> None:
        """Called before each epoch with the whole (N, C, H, W) uint8 training pool (e.g. to
        compute DeepCluster's pseudo-labels); default: nothing."""

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step; default: nothing."""
