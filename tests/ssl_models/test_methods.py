"""Every SSL method of the zoo: one engine step, learning on a fixed batch, channels, bf16, CUDA;
then the stateful parts of individual methods (queues, EMA teachers, schedules, pseudo-labels)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_models.backbones import Encoder, SmallCNN, VisionTransformer
from ssl_models.engine import TrainConfig, _fingerprint, train
from ssl_models.heads import DINOProjectionHead
from ssl_models.losses import dino_teacher_temperature
from ssl_models.methods import METHODS, SSLMethod
from ssl_models.methods.dae import corrupt
from ssl_models.methods.deepcluster import DeepCluster, image_keys
from ssl_models.methods.dino import DINO
from ssl_models.methods.inpainting import Inpainting
from ssl_models.methods.jigsaw import Jigsaw, jigsaw_permutations, random_tiles
from ssl_models.methods.kmeans import kmeans
from ssl_models.methods.mae import MAE
from ssl_models.methods.moco import MoCo
from ssl_models.methods.momentum import momentum_schedule, update_momentum
from ssl_models.methods.rotation import rotate_batch

ALL = sorted(METHODS)
EXPECTED = {
    "simclr", "moco", "byol", "simsiam", "dino", "barlowtwins", "vicreg", "swav",
    "deepcluster", "mae", "dae", "inpainting", "rotation", "jigsaw",
}  # fmt: skip
# small heads: the tests are about wiring and math, not capacity
SMALL_ARGS: dict[str, dict] = {
    "dino": {"hidden_dim": 64, "bottleneck_dim": 32, "out_dim": 64, "local_crops": 2},
    "swav": {"hidden_dim": 64, "out_dim": 32, "n_prototypes": 16, "local_crops": 2},
    "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "deepcluster": {"n_clusters": 4, "hidden_dim": 64, "out_dim": 32},
    "moco": {"queue_size": 64},
}


def make_encoder(name: str, channels: int) -> Encoder:
    if name == "mae":
        backbone = VisionTransformer(channels, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    else:
        backbone = SmallCNN(channels, width=8)
    return Encoder(backbone, [0.5] * channels, [0.25] * channels)


def make_method(name: str, channels: int = 1, **kwargs: object) -> SSLMethod:
    torch.manual_seed(0)
    return METHODS[name](make_encoder(name, channels), **{**SMALL_ARGS.get(name, {}), **kwargs})


def tiny_images(n: int = 8, channels: int = 1, side: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish images (upsampled noise) so crops and tiles carry some structure
    low = torch.rand(n, channels, side // 4, side // 4, generator=g)
    return (F.interpolate(low, size=side, mode="bilinear", align_corners=False) * 255).to(torch.uint8)


def trainable(method: SSLMethod) -> list[torch.nn.Parameter]:
    return [p for p in method.parameters() if p.requires_grad]


def test_registry_names_and_signatures() -> None:
    assert set(METHODS) == EXPECTED
    for name, cls in METHODS.items():
        assert cls.name == name
        params = list(inspect.signature(cls.__init__).parameters.values())
        assert [p.name for p in params[:3]] == ["self", "encoder", "augment"]
        for p in params[3:]:  # params.yaml passes plain keyword values (null: "the method decides")
            assert p.default is not inspect.Parameter.empty, (name, p.name)
            assert p.default is None or isinstance(p.default, (int, float, bool, tuple)), (name, p.name)
        assert cls.__doc__ and (cls.__module__ and inspect.getmodule(cls).__doc__), name


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_engine_sequence_step(name: str, channels: int) -> None:
    """views -> forward -> backward -> on_step_end gives a finite loss, gradients on every trainable
    parameter that the loss uses, and a detached (N, D) embedding (or None)."""
    method = make_method(name, channels)
    images = tiny_images(channels=channels)
    method.on_epoch_start(0, images)
    with torch.no_grad():
        views = method.views(images, torch.Generator().manual_seed(0))
    assert all(v.dtype == torch.float32 and v.ndim == 4 and v.shape[0] == 8 for v in views)
    out = method(views)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in trainable(method) if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    encoder_grads = [p.grad for p in method.encoder.parameters() if p.grad is not None]
    assert encoder_grads, "the encoder must be trained"
    method.on_step_end(0, 10)
    if out.embedding is not None:
        assert out.embedding.shape[0] == 8 and out.embedding.ndim == 2
        assert not out.embedding.requires_grad
    else:
        assert name in {"mae", "dae", "inpainting"}


@pytest.mark.filterwarnings("ignore:epoch 1. embeddings are collapsing")  # tiny heads at init
@pytest.mark.parametrize("name", ALL)
def test_real_engine_two_steps_bf16_channels_last(name: str) -> None:
    method = make_method(name, 3)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, precision="bf16", channels_last=True, device="cpu", log_every=1)
    result = train(method, tiny_images(16, 3), cfg, progress=False)
    assert result.steps == 2
    assert math.isfinite(result.history[-1]["loss"])


@pytest.mark.parametrize("name", ALL)
def test_loss_decreases_on_fixed_batch(name: str) -> None:
    """Fixed views, fixed in-forward randomness (masks, permutations): a few steps must learn.

    DINO's center is made instantaneous: while a slow center converges, the teacher's entropy and
    with it DINO's loss rise, by design. MoCo's queue is frozen: on a fixed batch it would fill
    with the queries' own keys as negatives (enqueueing is tested on its own)."""
    method = make_method(name, 1, **({"center_momentum": 0.0} if name == "dino" else {}))
    if name == "moco":
        method._dequeue_and_enqueue = lambda keys: None  # type: ignore[method-assign]
    images = tiny_images(8, 1)
    method.on_epoch_start(0, images)
    with torch.no_grad():
        views = method.views(images, torch.Generator().manual_seed(0))
        method(views)  # settles stateful buffers (center, queue) before the first recorded loss
    opt = torch.optim.Adam(trainable(method), lr=1e-3)
    losses = []
    for step in range(12):
        torch.manual_seed(1)
        loss = method(views).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.on_step_end(step, 1000)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.01 * abs(losses[0]), losses


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_loss_is_float32_and_close_to_fp32(name: str) -> None:
    method = make_method(name, 3)
    images = tiny_images(8, 3)
    method.on_epoch_start(0, images)
    method.eval()  # no queue/center updates, BN running stats: both passes see the same model
    with torch.no_grad():
        views = method.views(images, torch.Generator().manual_seed(0))
        torch.manual_seed(1)
        ref = method(views).loss
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = method(views).loss
    assert low.dtype == torch.float32
    assert torch.isfinite(low)
    assert abs(low.item() - ref.item()) <= 0.1 * abs(ref.item()) + 0.05


@pytest.mark.parametrize("name", ALL)
def test_state_dict_shapes_do_not_depend_on_epoch_start(name: str) -> None:
    """The engine's resume fingerprint hashes state_dict shapes before training starts."""
    method = make_method(name, 1)
    before = _fingerprint(method, TrainConfig(), 8)
    method.on_epoch_start(0, tiny_images(8, 1))
    assert _fingerprint(method, TrainConfig(), 8) == before


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_bf16_step(name: str) -> None:
    method = make_method(name, 3).cuda().to(memory_format=torch.channels_last)
    images = tiny_images(16, 3)
    method.on_epoch_start(0, images)
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        views = [v.contiguous(memory_format=torch.channels_last) for v in method.views(images.cuda(), generator)]
    assert all(v.is_cuda for v in views)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = method(views)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    method.on_step_end(0, 10)
    assert all(torch.isfinite(p.grad).all() for p in trainable(method) if p.grad is not None)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_runs_dino_and_deepcluster() -> None:
    for name in ("dino", "deepcluster", "moco"):
        cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, device="cuda", log_every=1)
        assert train(make_method(name, 3), tiny_images(16, 3), cfg, progress=False).steps == 4


# ------------------------------------------------------------------------------ momentum / EMA
def test_update_momentum_exact_formula() -> None:
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    old = [p.detach().clone() for p in ema.parameters()]
    update_momentum(model, ema, 0.9)
    for p, p_old, p_ema in zip(model.parameters(), old, ema.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p_old + 0.1 * p.detach())
    update_momentum(model, ema, 0.0)
    for p, p_ema in zip(model.parameters(), ema.parameters()):
        torch.testing.assert_close(p_ema, p.detach())


def test_momentum_schedule_values() -> None:
    assert momentum_schedule(0, 100, 0.996) == pytest.approx(0.996)
    assert momentum_schedule(50, 100, 0.996) == pytest.approx(0.998)
    assert momentum_schedule(100, 100, 0.996) == pytest.approx(1.0)
    assert momentum_schedule(25, 100, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)


def test_moco_key_encoder_moves_by_momentum_after_a_step() -> None:
    method = make_method("moco", 1, momentum=0.9)
    views = method.views(tiny_images(), torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(trainable(method), lr=0.5)
    method(views).loss.backward()
    opt.step()
    key_before = [p.clone() for p in method.key_encoder.parameters()]
    method.on_step_end(0, 10)
    for q, k_old, k in zip(method.encoder.parameters(), key_before, method.key_encoder.parameters()):
        torch.testing.assert_close(k, 0.9 * k_old + 0.1 * q.detach())
    assert any(not torch.equal(a, b) for a, b in zip(key_before, method.key_encoder.parameters()))


def test_moco_queue_pointer_advances_and_keys_are_enqueued() -> None:
    method: MoCo = make_method("moco", 1, queue_size=12)  # type: ignore[assignment]
    images = tiny_images(8)
    views = method.views(images, torch.Generator().manual_seed(0))
    with torch.no_grad():
        keys = F.normalize(method.key_projection_head(method.key_encoder(views[1])), dim=1)
    method(views)
    assert int(method.queue_ptr) == 8
    torch.testing.assert_close(method.queue[:8], keys)
    views2 = method.views(images, torch.Generator().manual_seed(1))
    with torch.no_grad():
        keys2 = F.normalize(method.key_projection_head(method.key_encoder(views2[1])), dim=1)
    method(views2)
    assert int(method.queue_ptr) == (16 % 12)
    # the second batch wrapped around: rows 8..11 then 0..3
    torch.testing.assert_close(method.queue[8:], keys2[:4])
    torch.testing.assert_close(method.queue[:4], keys2[4:])
    torch.testing.assert_close(method.queue[4:8], keys[4:])
    method.eval()
    method(views)
    assert int(method.queue_ptr) == 4, "evaluation must not enqueue"


@pytest.mark.parametrize(
    "name,teacher", [("byol", "target_encoder"), ("dino", "teacher_encoder"), ("moco", "key_encoder")]
)
def test_teacher_not_updated_by_gradient(name: str, teacher: str) -> None:
    method = make_method(name, 1)
    teacher_net = getattr(method, teacher)
    before = [p.clone() for p in teacher_net.parameters()]
    opt = torch.optim.SGD(trainable(method), lr=0.5)
    views = method.views(tiny_images(), torch.Generator().manual_seed(0))
    method(views).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher_net.parameters())
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher_net.parameters()))
    method.on_step_end(0, 100)  # the EMA is what moves it
    assert any(not torch.equal(a, b) for a, b in zip(before, teacher_net.parameters()))


# -------------------------------------------------------------------------------------- DINO
def test_dino_teacher_temperature_schedule() -> None:
    assert dino_teacher_temperature(0, 30) == pytest.approx(0.04)
    assert dino_teacher_temperature(15, 30) == pytest.approx(0.055)
    assert dino_teacher_temperature(30, 30) == pytest.approx(0.07)
    assert dino_teacher_temperature(1000, 30) == pytest.approx(0.07)
    assert dino_teacher_temperature(0, 0) == pytest.approx(0.07)
    method: DINO = make_method("dino", 1, teacher_temp=0.07)  # type: ignore[assignment]
    assert float(method.teacher_temp) == pytest.approx(0.04)
    method.on_step_end(14, 100)  # warmup: 30 % of 100 steps
    assert float(method.teacher_temp) == pytest.approx(0.04 + 0.03 * 15 / 30)


def test_dino_center_update_formula_and_only_in_training() -> None:
    method: DINO = make_method("dino", 1)  # type: ignore[assignment]
    crit = method.criterion
    t = torch.randn(6, crit.center.shape[1])
    crit.center.fill_(1.0)
    crit.update_center(t)
    torch.testing.assert_close(crit.center, 0.9 * torch.ones_like(crit.center) + 0.1 * t.mean(0, keepdim=True))
    views = method.views(tiny_images(), torch.Generator().manual_seed(0))
    before = crit.center.clone()
    method(views)
    assert not torch.equal(before, crit.center)
    method.eval()
    before = crit.center.clone()
    method(views)
    assert torch.equal(before, crit.center)


def test_dino_accepts_a_vit_with_local_crops() -> None:
    encoder = Encoder(VisionTransformer(1, 4, 32, 1, 2), [0.5], [0.25])
    method = DINO(encoder, hidden_dim=32, bottleneck_dim=16, out_dim=32, local_crops=2)
    views = method.views(tiny_images(side=16), torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in views] == [16, 16, 8, 8]
    assert torch.isfinite(method(views).loss)


def test_dino_head_batchnorm_spreads_nearly_parallel_features() -> None:
    """Why the head has BatchNorm by default: a random-init CNN's features are nearly parallel
    (ReLU, then average pooling); without BatchNorm the head maps them to one point, the centred
    teacher is uniform and DINO's loss sits at ln(out_dim)."""
    torch.manual_seed(0)
    x = torch.rand(1, 64) + 0.01 * torch.randn(128, 64)  # pairwise cosine ~0.99

    @torch.no_grad()
    def mean_cosine(head: DINOProjectionHead) -> float:
        z = F.normalize(head.mlp(x), dim=-1)
        return float((z @ z.T).mean())

    assert mean_cosine(DINOProjectionHead(64, 64, 16, 32, use_bn=False)) > 0.95
    assert mean_cosine(DINOProjectionHead(64, 64, 16, 32, use_bn=True)) < 0.5
    method: DINO = make_method("dino", 1)  # type: ignore[assignment]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in method.projection_head.modules())


# ------------------------------------------------------------------------------- DeepCluster
def test_kmeans_recovers_separated_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    x = torch.cat([c + 0.3 * torch.randn(50, 2, generator=g) for c in centers])
    truth = torch.arange(3).repeat_interleave(50)
    centroids, labels = kmeans(x, 3, 10, torch.Generator().manual_seed(1))
    # same partition up to renaming: each true cluster maps to a single label, all distinct
    mapped = [labels[truth == i].unique() for i in range(3)]
    assert all(m.numel() == 1 for m in mapped) and len({int(m) for m in mapped}) == 3
    assert torch.cdist(centers, centroids).min(1).values.max() < 0.3


def test_kmeans_never_leaves_empty_clusters() -> None:
    x = torch.cat([torch.zeros(20, 2), torch.ones(20, 2)])
    x[0] = 10.0  # an outlier
    _, labels = kmeans(x + 0.01 * torch.randn(40, 2), 3, 5, torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=3).min() > 0


def test_deepcluster_pool_pseudo_labels() -> None:
    method: DeepCluster = make_method("deepcluster", 1, n_clusters=3)  # type: ignore[assignment]
    images = tiny_images(12)
    method.on_epoch_start(0, images)
    labels = method.pseudo_labels(images)
    assert labels.shape == (12,) and labels.min() >= 0 and labels.max() < 3
    # the labels are those of nearest centroids of the pool features, whatever the batch order
    perm = torch.randperm(12)
    assert torch.equal(method.pseudo_labels(images[perm]), labels[perm])
    assert torch.equal(method.pseudo_labels(tiny_images(2, seed=99)), torch.tensor([-1, -1]))
    assert torch.isclose((method.class_weights * torch.bincount(labels, minlength=3)).sum(), torch.tensor(12.0))
    assert not torch.equal(image_keys(images[:1]), image_keys(images[1:2]))
    assert torch.equal(image_keys(images), image_keys(images.float() / 255))


def test_deepcluster_needs_epoch_start() -> None:
    method = make_method("deepcluster", 1)
    views = method.views(tiny_images(), None)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        method(views)


# --------------------------------------------------------------------------------------- MAE
def test_mae_rejects_a_cnn_backbone() -> None:
    with pytest.raises(ValueError, match="Vision Transformer"):
        MAE(Encoder(SmallCNN(1, 8), [0.5], [0.25]))


def test_mae_encodes_only_visible_patches() -> None:
    method: MAE = make_method("mae", 1, mask_ratio=0.75)  # type: ignore[assignment]
    seen = []
    vit = method.encoder.backbone
    original = vit.encode
    vit.encode = lambda tokens: (seen.append(tokens.shape), original(tokens))[1]  # type: ignore[method-assign]
    method(method.views(tiny_images(side=16), None))
    assert seen == [torch.Size([8, 4, 32])]  # 16 patches of 4x4, a quarter visible


def test_vit_any_size_and_clear_error() -> None:
    vit = VisionTransformer(3, 4, 32, 1, 2)
    for side in (16, 28, 32):
        assert vit(torch.rand(2, 3, side, side)).shape == (2, 32)
    with pytest.raises(ValueError, match="patch size"):
        vit(torch.rand(2, 3, 30, 30))


# ------------------------------------------------------------------ rotation, jigsaw, DAE, inpainting
def test_rotate_batch() -> None:
    x = torch.rand(3, 2, 5, 5)
    rotated, labels = rotate_batch(x)
    assert rotated.shape == (12, 2, 5, 5)
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    torch.testing.assert_close(rotated[:3], x)
    torch.testing.assert_close(torch.rot90(rotated[3:6], -1, dims=(2, 3)), x)
    torch.testing.assert_close(rotated[6:9], x.flip(2).flip(3))


def test_jigsaw_permutation_set() -> None:
    perms = jigsaw_permutations(100)
    assert perms.shape == (100, 9)
    assert torch.equal(perms.sort(1).values, torch.arange(9).expand(100, 9))
    assert len({tuple(p) for p in perms.tolist()}) == 100
    hamming = (perms[:, None] != perms[None]).sum(-1).float()
    # random pairs of permutations average 9 - 1 = 8 differing positions; the greedy set does better
    assert hamming.sum() / (100 * 99) > 8.0
    assert (hamming + 10 * torch.eye(100)).min() >= 2  # no duplicates (a difference is at least a swap)
    assert torch.equal(jigsaw_permutations(100), perms)  # fixed


def test_jigsaw_grid_sets_tiles_and_classes() -> None:
    small: Jigsaw = make_method("jigsaw", 1)  # type: ignore[assignment]
    assert small.permutations.shape == (24, 4)  # 2 x 2 by default: all 4! orders
    assert len(small.views(tiny_images(), torch.Generator().manual_seed(0))) == 4 + 1  # 4 tiles, the labels
    paper: Jigsaw = make_method("jigsaw", 1, grid=3)  # type: ignore[assignment]
    assert paper.permutations.shape == (100, 9)
    with pytest.raises(ValueError, match=r"\[1, 24\]"):
        make_method("jigsaw", 1, n_permutations=100)


def test_jigsaw_tiles_are_image_cells() -> None:
    x = torch.arange(2 * 1 * 9 * 9, dtype=torch.float32).view(2, 1, 9, 9)
    tiles = random_tiles(x, 3, tile_fraction=1.0)
    assert tiles.shape == (2, 9, 1, 3, 3)
    torch.testing.assert_close(tiles[1, 5], x[1, :, 3:6, 6:9])
    tiles = random_tiles(torch.rand(4, 3, 28, 28), 3, 0.75, torch.Generator().manual_seed(0))
    assert tiles.shape == (4, 9, 3, 7, 7)


def test_dae_corruption() -> None:
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(corrupt(x, 0.0, 0.0), x)
    assert corrupt(x, 1.0, 0.0).abs().sum() == 0
    y = corrupt(x, 0.5, 0.0, torch.Generator().manual_seed(0))
    zeroed = (y == 0).all(1)  # masking zeroes all channels of a pixel together
    assert 0.3 < zeroed.float().mean() < 0.7
    torch.testing.assert_close(y[~zeroed[:, None].expand_as(y)], x[~zeroed[:, None].expand_as(x)])


def test_inpainting_views_erase_one_square() -> None:
    method: Inpainting = make_method("inpainting", 3)  # type: ignore[assignment]
    masked, clean, mask = method.views(tiny_images(4, 3), torch.Generator().manual_seed(0))
    assert mask.shape == (4, 1, 16, 16)
    assert torch.equal(mask.sum((1, 2, 3)), torch.full((4,), 64.0))  # an 8x8 square each
    inside = mask.bool().expand_as(masked)
    torch.testing.assert_close(masked[~inside], clean[~inside])
    torch.testing.assert_close(masked[inside], torch.full_like(masked[inside], 0.5))
    # a perfect reconstruction of the square gives 0 loss, whatever happens outside
    perfect = (clean - method.encoder.mean) / method.encoder.std + (1 - mask) * 7
    method.decoder.forward = lambda z, size: perfect  # type: ignore[method-assign]
    assert method([masked, clean, mask]).loss.item() == pytest.approx(0.0, abs=1e-6)


def test_jigsaw_loss_depends_on_tile_order() -> None:
    """The classifier sees tiles in shuffled order: the views' seed fixes the permutation labels
    (drawn in ``views``, the last view), and other labels give another loss."""
    method: Jigsaw = make_method("jigsaw", 1)  # type: ignore[assignment]
    method.eval()
    views = method.views(tiny_images(), torch.Generator().manual_seed(0))
    again = method.views(tiny_images(), torch.Generator().manual_seed(0))
    assert all(torch.equal(u, v) for u, v in zip(views, again))
    a, b = method(views).loss, method(again).loss
    other = views[:-1] + [(views[-1] + 1) % method.permutations.shape[0]]
    c = method(other).loss
    assert a == b and a != c


def test_stride2_stem_skips_the_full_resolution_layer_with_the_same_parameters() -> None:
    one, two = SmallCNN(1, width=8, stem_stride=1), SmallCNN(1, width=8, stem_stride=2)
    assert [p.shape for p in one.parameters()] == [p.shape for p in two.parameters()]
    x = torch.rand(2, 1, 28, 28)
    first = {}
    for name, net in (("one", one), ("two", two)):
        net.features[0].register_forward_hook(lambda m, i, o, name=name: first.__setitem__(name, o.shape))
        assert net(x).shape == (2, 32)
    assert first == {"one": (2, 8, 28, 28), "two": (2, 8, 14, 14)}
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2"):
        SmallCNN(1, stem_stride=4)
