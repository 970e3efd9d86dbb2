"""DINO: "Emerging Properties in Self-Supervised Vision Transformers" (Caron et al., ICCV 2021,
arXiv:2104.14294).

Across workers: the loss is per sample, the teacher's center moves by the global batch's mean
(``DINOLoss.update_center`` all-reduces it), BatchNorm in the heads (student and teacher) is
synchronised by the engine, and the teacher's EMA is the same on every worker.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ssl_models.augment import ViewAugment
from ssl_models.augment.multicrop import MultiCropAugment
from ssl_models.backbones import Encoder
from ssl_models.heads import DINOProjectionHead
from ssl_models.losses import DINOLoss, dino_teacher_temperature
from ssl_models.methods.base import SSLMethod, SSLOutput
from ssl_models.methods.crops import forward_crops
from ssl_models.methods.momentum import frozen_copy, momentum_schedule, update_momentum


class DINO(SSLMethod):
    """Self-distillation without labels: a student (all crops) matches a momentum teacher (global
    crops only) whose outputs are centred and sharpened.

    Args:
        encoder: normalization + backbone (a CNN, or a ViT: crops of every size are accepted).
        augment: colour settings of the crops.
        hidden_dim, bottleneck_dim, out_dim: head sizes (paper: 2048 / 256 / 65536).
        local_crops: number of small crops besides the 2 global ones (paper: 6; its 2 + 2 is
            multi-crop too, and on a CPU budget learns more per second: kNN 0.7709 vs 0.7603
            after 90 s in a bench/methods.py-style run).
        global_crop_scale, local_crop_scale: area ranges (paper: 0.4-1 and 0.05-0.4).
        student_temp: paper 0.1.
        warmup_teacher_temp, teacher_temp: the teacher temperature rises linearly from the first
            to the second (paper: 0.04 -> 0.04, the default of its code, which "recommends starting
            with 0.04"; 0.07 for its longest runs. 0.04 -> 0.07 left this CNN at a flatter
            loss: kNN 0.7560 vs 0.7689 after 90 s) ...
        teacher_temp_warmup: ... over this fraction of training (paper: 30 of 100 epochs).
        center_momentum: paper 0.9.
        momentum_base: teacher EMA momentum at step 0, cosine to 1 (paper: 0.996; 0.99 here, as
            BYOL's: at 0.996 the teacher barely moves in the few hundred steps of a CPU run).
        use_bn_in_head: BatchNorm in the head's MLP (DINO's ``--use_bn_in_head``; the paper's ViTs
            go without). On by default: a random-init CNN's features are nearly parallel, without
            it the head maps every image to one point, the centred teacher is uniform and the loss
            sits at ln(out_dim) (bench/methods.py: stuck for 250 steps; with it, it learns).
    """

    name = "dino"
    # paper: AdamW lr 5e-4 x batch/256, wd 0.04-0.4 (ViTs); SGD suits the small CNN
    optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        bottleneck_dim: int = 128,
        out_dim: int = 1024,
        local_crops: int = 2,
        global_crop_scale: tuple[float, float] = (0.4, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        student_temp: float = 0.1,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.3,
        center_momentum: float = 0.9,
        momentum_base: float = 0.99,
        use_bn_in_head: bool = True,
    ) -> None:
        super().__init__(encoder, augment)
        self.multicrop = MultiCropAugment(
            global_crops=2,
            local_crops=local_crops,
            global_scale=tuple(global_crop_scale),
            local_scale=tuple(local_crop_scale),
            base=self.augment,
        )
        self.warmup_teacher_temp, self.final_teacher_temp = warmup_teacher_temp, teacher_temp
        self.teacher_temp_warmup = teacher_temp_warmup
        self.momentum_base = momentum_base
        self.projection_head = DINOProjectionHead(encoder.out_dim, hidden_dim, bottleneck_dim, out_dim, use_bn_in_head)
        self.teacher_encoder = frozen_copy(self.encoder)
        self.teacher_projection_head = frozen_copy(self.projection_head)
        self.criterion = DINOLoss(out_dim, student_temp, center_momentum)
        # a buffer, not a float: it is saved with checkpoints and changing it recompiles nothing
        self.register_buffer("teacher_temp", torch.tensor(warmup_teacher_temp))

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """2 global crops then ``local_crops`` local crops (smaller) of each image."""
        return self.multicrop(images, generator)

    def forward(self, views: list[Tensor]) -> SSLOutput:
        student = forward_crops(lambda x: self.projection_head(self.encoder(x)), views)  # per crop (N, out_dim)
        with torch.no_grad():
            teacher = forward_crops(lambda x: self.teacher_projection_head(self.teacher_encoder(x)), views[:2])
        loss = self.criterion(student, teacher, self.teacher_temp)
        return SSLOutput(loss, embedding=student[0].detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        m = momentum_schedule(step, total_steps, self.momentum_base)
        update_momentum(self.encoder, self.teacher_encoder, m)
        update_momentum(self.projection_head, self.teacher_projection_head, m)
        warmup_steps = int(self.teacher_temp_warmup * total_steps)
        self.teacher_temp.fill_(
            dino_teacher_temperature(step + 1, warmup_steps, self.warmup_teacher_temp, self.final_teacher_temp)
        )
