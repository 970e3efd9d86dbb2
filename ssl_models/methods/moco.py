"""MoCo v2: "Momentum Contrast for Unsupervised Visual Representation Learning" (He et al., CVPR
2020, arXiv:1911.05722) with the MLP head, blur and temperature of "Improved Baselines with
Momentum Contrastive Learning" (Chen et al., 2020, arXiv:2003.04297).

Across workers every worker's keys are enqueued, in rank order (the official
``concat_all_gather``), so every worker keeps the same queue as one process with the global batch;
the loss is per query (each worker's local mean; their mean is the one-process loss). BatchNorm is
synchronised by the engine rather than shuffled as in the paper: the statistics are then the
global batch's, the same as one process's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_models import dist
from ssl_models.augment import ViewAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import MoCoProjectionHead
from ssl_models.losses import InfoNCELoss
from ssl_models.methods.base import SSLMethod, SSLOutput
from ssl_models.methods.momentum import frozen_copy, update_momentum


class MoCo(SSLMethod):
    """A query encoder trained by InfoNCE against its momentum-encoded key and a queue of past keys.

    Single-device training has no shuffled BatchNorm (the paper's guard against BN leaking the
    positive); the queue and the momentum encoder are as in the paper.

    Args:
        encoder: normalization + backbone.
        augment: the view generator.
        hidden_dim, out_dim: MLP head sizes (paper: 2048 / 128).
        queue_size: number of queued negative keys (paper: 65536 on ImageNet; 4096, the value of
            the CIFAR-10 recipes, suits pools of tens of thousands of images).
        temperature: InfoNCE temperature (paper: 0.2).
        momentum: key-encoder EMA momentum (paper: 0.999).
    """

    name = "moco"
    # paper: SGD lr 0.03, wd 1e-4 for 200 ImageNet epochs; 0.3 as SimCLR for short runs
    optim = {"optimizer": "sgd", "lr": 0.3, "weight_decay": 5e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        out_dim: int = 128,
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.999,
    ) -> None:
        super().__init__(encoder, augment)
        self.momentum = momentum
        self.projection_head = MoCoProjectionHead(encoder.out_dim, hidden_dim, out_dim)
        self.key_encoder = frozen_copy(self.encoder)
        self.key_projection_head = frozen_copy(self.projection_head)
        self.criterion = InfoNCELoss(temperature)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, out_dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, views: list[Tensor]) -> SSLOutput:
        x_q, x_k = views
        q = self.projection_head(self.encoder(x_q))  # (N, D)
        with torch.no_grad():
            k = self.key_projection_head(self.key_encoder(x_k))  # (N, D)
        # a copy of the queue: the enqueue below must not touch what backward needs
        loss = self.criterion(q, k, self.queue.clone())
        if self.training:
            self._dequeue_and_enqueue(k)
        return SSLOutput(loss, embedding=q.detach())

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys: Tensor) -> None:
        """Overwrite the oldest ``N`` queue entries with the (normalized) keys of every worker; wraps
        around."""
        size = self.queue.shape[0]
        keys = F.normalize(dist.gather(keys).float(), dim=1)[:size]  # (B, D) every worker's, in rank order
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        update_momentum(self.encoder, self.key_encoder, self.momentum)
        update_momentum(self.projection_head, self.key_projection_head, self.momentum)
