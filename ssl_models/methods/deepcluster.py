"""DeepCluster: "Deep Clustering for Unsupervised Learning of Visual Features" (Caron et al., ECCV
2018, arXiv:1807.05520).

Across workers (every worker is handed the whole pool in ``on_epoch_start``): each worker embeds
its ``tensor_split`` share of the pool, the features are gathered in rank order, and every worker
clusters the whole pool's; rank 0's centroids and re-initialised classifier are broadcast, so the
pseudo-labels and weights are the same everywhere even where k-means on a GPU is not bit-exact. The
class-weighted cross-entropy is normalised by the global batch's total weight, so the workers'
mean is the one-process loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_models import dist
from ssl_models.augment import ViewAugment, to_float
from ssl_models.backbones import Encoder
from ssl_models.data.shards import ShardedImages
from ssl_models.device import autocast, autocast_dtype
from ssl_models.heads import ProjectionHead
from ssl_models.methods.base import (
    SSLMethod,
    SSLOutput,
    labels_from_view,
    labels_to_view,
)
from ssl_models.methods.kmeans import assign, kmeans


def image_keys(images: Tensor | ShardedImages, chunk: int = 2048) -> Tensor:
    """An exact-enough hash of each image's pixels, to find a batch image's pseudo-label in the pool.

    A dot product of the uint8 pixels with fixed pseudo-random weights below 2^31 (no overflow up to
    ~4 M pixels per image); distinct images collide with negligible probability. Computed ``chunk``
    images at a time: the int64 products of a whole pool would take 8 bytes per pixel, and a
    streamed pool is read a chunk at a time.

    Args:
        images: (N, C, H, W) uint8 or float in [0, 1]: a tensor, or a ``ShardedImages`` pool.

    Returns:
        (N,) int64.
    """
    weights = torch.randint(1, 2**31 - 1, (math.prod(images.shape[1:]),), generator=torch.Generator().manual_seed(0))
    keys = []
    for part in images.split(chunk):
        pixels = part.flatten(1)
        if pixels.dtype != torch.uint8:
            pixels = (to_float(pixels) * 255).round()
        keys.append((pixels.long() * weights.to(pixels.device)).sum(1))
    return torch.cat(keys) if keys else torch.empty(0, dtype=torch.long)


class DeepCluster(SSLMethod):
    """Alternate k-means on the network's features (pseudo-labels, once per epoch) and training the
    network to classify its images into their clusters.

    Each epoch, ``on_epoch_start`` embeds the pool (eval mode), fits k-means on at most
    ``kmeans_images`` of it, labels every pool image, re-initializes the classifier, and weights
    the classes by inverse cluster size (the paper samples uniformly over clusters). Features are
    centred and L2-normalized before clustering (the paper also PCA-whitens them to 256 dims).
    Batch images are matched to their pool labels by a pixel hash; an image not in the pool takes
    the cluster nearest to its view's features.

    Args:
        encoder: normalization + backbone.
        augment: the view generator (one view per image, as in the paper).
        hidden_dim, out_dim: MLP between backbone and classifier (the paper's fc6/fc7: 4096).
        n_clusters: k (paper: 10000 on ImageNet, 10x the classes; 100 suits 10-class pools).
        kmeans_iterations: Lloyd iterations per epoch.
        kmeans_images: at most this many pool images fit the centroids (all are labelled).
    """

    name = "deepcluster"
    # paper: SGD lr 0.05, wd 1e-5; diverges with SGD 0.3
    optim = {"optimizer": "sgd", "lr": 0.06, "weight_decay": 5e-4}

    def __init__(
        self,
        encoder: Encoder,
        augment: ViewAugment | None = None,
        hidden_dim: int = 512,
        out_dim: int = 128,
        n_clusters: int = 100,
        kmeans_iterations: int = 20,
        kmeans_images: int = 10000,
    ) -> None:
        super().__init__(encoder, augment)
        self.n_clusters = n_clusters
        self.kmeans_iterations = kmeans_iterations
        self.kmeans_images = kmeans_images
        self.projection_head = ProjectionHead(encoder.out_dim, hidden_dim, out_dim, num_layers=2)
        self.classifier = nn.Linear(out_dim, n_clusters)
        # recomputed every epoch, so not saved (and the checkpoint fingerprint stays fixed)
        self.register_buffer("centroids", torch.empty(0, out_dim), persistent=False)
        self.register_buffer("feature_mean", torch.zeros(out_dim), persistent=False)
        self.register_buffer("class_weights", torch.ones(n_clusters), persistent=False)
        self.register_buffer("pool_keys", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("pool_labels", torch.empty(0, dtype=torch.long), persistent=False)

    def features(self, x: Tensor) -> Tensor:
        """What is clustered and classified: (N, C, H, W) -> (N, out_dim)."""
        return self.projection_head(self.encoder(x))

    def _cluster_space(self, z: Tensor) -> Tensor:
        return F.normalize(z.float() - self.feature_mean, dim=1)

    @torch.no_grad()
    def _embed_pool(self, images: Tensor | ShardedImages) -> Tensor:
        """Eval-mode features of the pool (N, C, H, W) uint8 -> (N, D) float32, read 1024 images at a
        time; across workers each embeds its ``tensor_split`` share and the shares are gathered in
        rank order."""
        device = self.classifier.weight.device
        shares = images.tensor_split(dist.world_size())
        was_training = self.training
        self.eval()
        with autocast(device, autocast_dtype(device)):  # bf16 where fast: this pass sees the whole pool
            z = [self.features(to_float(chunk.to(device))).float() for chunk in shares[dist.rank()].split(1024)]
        self.train(was_training)
        z = torch.cat(z) if z else torch.empty(0, self.feature_mean.shape[0], device=device)
        return dist.gather_parts(z, [len(s) for s in shares])

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, images: Tensor | ShardedImages) -> None:
        """Recompute the pseudo-labels of the pool (N, C, H, W) uint8 and reset the classifier.
        Across workers ``images`` is the whole pool on every worker. A ``ShardedImages`` pool is
        read in chunks (features, then pixel keys): memory grows with N only by the (N, D)
        features and the keys and labels, never by the pixels."""
        device = self.classifier.weight.device
        z = self._embed_pool(images)  # (N, D)
        generator = torch.Generator().manual_seed(epoch)
        fit = torch.randperm(z.shape[0], generator=generator)[: self.kmeans_images].to(device)
        self.feature_mean = dist.broadcast_(z[fit].mean(0))
        zc = self._cluster_space(z)
        self.centroids, _ = kmeans(zc[fit], min(self.n_clusters, fit.numel()), self.kmeans_iterations, generator)
        dist.broadcast_(self.centroids)
        labels = assign(zc, self.centroids)  # (N,)
        counts = torch.bincount(labels, minlength=self.n_clusters).float()
        # inverse-frequency class weights, mean 1 over the images
        self.class_weights = torch.where(counts > 0, labels.numel() / (counts.clamp(min=1) * (counts > 0).sum()), 0.0)
        keys = image_keys(images).to(device)
        self.pool_keys, order = keys.sort()
        self.pool_labels = labels[order]
        self.classifier.reset_parameters()
        for p in self.classifier.parameters():  # the global RNG differs between workers
            dist.broadcast_(p.data)

    @torch.no_grad()
    def pseudo_labels(self, images: Tensor) -> Tensor:
        """Pool pseudo-labels of a batch (N, C, H, W); -1 for images not in the pool."""
        if self.pool_keys.numel() == 0:
            return torch.full((images.shape[0],), -1, dtype=torch.long, device=images.device)
        keys = image_keys(images).to(self.pool_keys.device)
        pos = torch.searchsorted(self.pool_keys, keys).clamp(max=self.pool_keys.numel() - 1)
        return torch.where(self.pool_keys[pos] == keys, self.pool_labels[pos], -1)

    def views(self, images: Tensor, generator: torch.Generator | None = None) -> list[Tensor]:
        """One view and the images' pool pseudo-labels (looked up here, where the raw images are
        seen; -1: not in the pool), as an (N, 1, 1, 1) batch (``labels_to_view``)."""
        return [self.augment(images, generator), labels_to_view(self.pseudo_labels(images))]

    def forward(self, views: list[Tensor]) -> SSLOutput:
        if self.centroids.numel() == 0:
            raise RuntimeError(
                "DeepCluster has no clusters yet: call on_epoch_start(epoch, images) first (the engine does)"
            )
        x, label_view = views
        z = self.features(x)  # (N, out_dim)
        labels = labels_from_view(label_view).to(x.device)
        nearest = assign(self._cluster_space(z.detach()), self.centroids)
        labels = torch.where(labels >= 0, labels, nearest)
        logits = self.classifier(z).float()  # (N, n_clusters)
        # weighted mean: sum_i w_i l_i / sum_i w_i over the global batch (F.cross_entropy's with
        # weight=, whose denominator would be this worker's alone)
        weights = self.class_weights[labels]
        per_image = F.cross_entropy(logits, labels, reduction="none")  # (N,)
        loss = (weights * per_image).sum() / dist.all_reduce_mean(weights.sum())
        return SSLOutput(loss, embedding=z.detach())
