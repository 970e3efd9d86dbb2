"""SSL methods, selectable by name."""

from __future__ import annotations

from ssl_models.methods.barlow_twins import BarlowTwins
from ssl_models.methods.base import SSLMethod, SSLOutput
from ssl_models.methods.byol import BYOL
from ssl_models.methods.dae import DAE
from ssl_models.methods.deepcluster import DeepCluster
from ssl_models.methods.dino import DINO
from ssl_models.methods.inpainting import Inpainting
from ssl_models.methods.jigsaw import Jigsaw
from ssl_models.methods.mae import MAE
from ssl_models.methods.moco import MoCo
from ssl_models.methods.rotation import RotNet
from ssl_models.methods.simclr import SimCLR
from ssl_models.methods.simsiam import SimSiam
from ssl_models.methods.swav import SwAV
from ssl_models.methods.vicreg import VICReg

METHODS: dict[str, type[SSLMethod]] = {
    cls.name: cls
    for cls in (
        SimCLR,
        MoCo,
        BYOL,
        SimSiam,
        DINO,
        BarlowTwins,
        VICReg,
        SwAV,
        DeepCluster,
        MAE,
        DAE,
        Inpainting,
        RotNet,
        Jigsaw,
    )
}


def method_class(name: str) -> type[SSLMethod]:
    """The method class registered under ``name``; an unknown name lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown SSL method {name!r}; choose one of {', '.join(sorted(METHODS))}") from None


__all__ = [
    "BYOL",
    "DAE",
    "DINO",
    "MAE",
    "METHODS",
    "BarlowTwins",
    "DeepCluster",
    "Inpainting",
    "Jigsaw",
    "MoCo",
    "RotNet",
    "SSLMethod",
    "SSLOutput",
    "SimCLR",
    "SimSiam",
    "SwAV",
    "VICReg",
    "method_class",
]
