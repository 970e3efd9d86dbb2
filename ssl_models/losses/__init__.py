"""Self-supervised losses."""

from ssl_models.losses.barlow_twins import BarlowTwinsLoss
from ssl_models.losses.dino import DINOLoss, dino_teacher_temperature
from ssl_models.losses.info_nce import InfoNCELoss
from ssl_models.losses.negative_cosine import NegativeCosineSimilarity
from ssl_models.losses.ntx_ent import NTXentLoss
from ssl_models.losses.swav import SwAVLoss, sinkhorn
from ssl_models.losses.vicreg import VICRegLoss, vicreg_terms

__all__ = [
    "BarlowTwinsLoss",
    "DINOLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "SwAVLoss",
    "VICRegLoss",
    "dino_teacher_temperature",
    "sinkhorn",
    "vicreg_terms",
]
