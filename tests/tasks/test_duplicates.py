"""Near-duplicate search: the windowed search finds exactly what comparing every pair finds, copies
count once per repeat, and the signatures ignore what a copy changes (brightness, contrast, a few
pixels, re-encoding, resizing) but not what tells two images apart."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tasks.duplicates import despeckle, nearest, nearest_earlier, signatures


def blob_images(n: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 1, side, side): three soft blobs on a dark, slightly noisy background; like photos,
    their content survives re-encoding and resizing, and two of them are clearly different."""
    y, x = np.mgrid[:side, :side]
    out = np.zeros((n, 1, side, side), np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx = rng.uniform(0, side, 2)
            width = rng.uniform(side / 14, side / 4.5)
            out[i, 0] += rng.uniform(80, 200) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    return np.clip(out + rng.uniform(0, 8, out.shape), 0, 255).astype(np.uint8)


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    """(1, H, W) uint8 through a JPEG round trip with PIL."""
    buf = io.BytesIO()
    Image.fromarray(image[0]).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))[None]


def resized(image: np.ndarray) -> np.ndarray:
    """(1, H, W) uint8 resized to half and back with PIL's default filter."""
    h, w = image.shape[1:]
    return np.asarray(Image.fromarray(image[0]).resize((w // 2, h // 2)).resize((w, h)))[None]


def pixels_changed(image: np.ndarray, rng: np.random.Generator, count: int = 5) -> np.ndarray:
    """(1, H, W) uint8 with ``count`` pixels set to random values."""
    out = image.copy()
    flat = out.reshape(-1)
    flat[rng.choice(flat.size, count, replace=False)] = rng.integers(0, 256, count)
    return out


def brute_force(queries: np.ndarray, pool: np.ndarray, threshold: float, earlier: bool) -> tuple[np.ndarray, np.ndarray]:
    sim = np.max(queries @ pool.transpose(0, 2, 1), axis=0)  # QxP, the better kind
    if earlier:
        sim[np.triu_indices(len(sim))] = -np.inf
    best = sim.max(1) if sim.shape[1] else np.full(len(sim), -np.inf, np.float32)
    index = np.where(best >= threshold, sim.argmax(1) if sim.shape[1] else -1, -1)
    return index, np.where(best >= threshold, best, -np.inf)


@pytest.mark.parametrize("threshold", [0.5, 0.95, 0.999])
@pytest.mark.parametrize("block", [3, 64])
def test_search_finds_what_every_pair_finds(threshold: float, block: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 20, 16))
    sigs = centres[:, rng.integers(0, 20, 150)] + rng.normal(scale=0.05, size=(2, 150, 16))  # clusters of near copies
    sigs[:, ::7] = sigs[:, 3:4]  # and exact ones
    sigs = (sigs / np.linalg.norm(sigs, axis=2, keepdims=True)).astype(np.float32)
    queries, pool = sigs[:, :40], sigs[:, 40:]
    index, sim = nearest(queries, pool, threshold, block=block)
    want_index, want_sim = brute_force(queries, pool, threshold, earlier=False)
    assert (index >= 0).sum() > 0 and np.array_equal(index >= 0, want_index >= 0)
    np.testing.assert_allclose(sim[index >= 0], want_sim[index >= 0], rtol=1e-5)

    index, sim = nearest_earlier(sigs, threshold, block=block)
    want_index, want_sim = brute_force(sigs, sigs, threshold, earlier=True)
    assert np.array_equal(index >= 0, want_index >= 0)
    assert (index < np.arange(len(index))).all()  # always an earlier image
    np.testing.assert_allclose(sim[index >= 0], want_sim[index >= 0], rtol=1e-5)


def test_each_repeat_counts_once() -> None:
    images = blob_images(6, 28, np.random.default_rng(1))
    pool = np.concatenate([images[[0, 1, 0, 2, 0, 1]], images[3:]])  # 0 three times, 1 twice
    index, sim = nearest_earlier(signatures(pool), 0.9995)
    assert index.tolist() == [-1, -1, 0, -1, 0, 1, -1, -1, -1]
    assert (sim[index >= 0] > 0.99999).all()


def test_signatures_ignore_brightness_contrast_and_value_range() -> None:
    images = blob_images(4, 20, np.random.default_rng(2))
    base = signatures(images)
    np.testing.assert_allclose(signatures(images.astype(np.float32) * 0.5 + 30), base, atol=1e-5)
    np.testing.assert_allclose(signatures(images.astype(np.float32) / 255), base, atol=1e-5)
    rgb = np.repeat(images, 3, axis=1)
    np.testing.assert_allclose(signatures(rgb), base, atol=1e-5)
    assert base.shape == (2, 4, 64)
    np.testing.assert_allclose(np.linalg.norm(base, axis=2), 1.0, rtol=1e-5)


def test_constant_and_nonfinite_images() -> None:
    images = np.zeros((3, 1, 10, 10), np.float32)
    images[1] = 0.7
    images[2, 0, 3, 3] = np.nan  # otherwise constant: NaN counts as 0
    sigs = signatures(images)
    assert np.isfinite(sigs).all() and (sigs == 0).all()
    index, _ = nearest_earlier(sigs, 0.5)
    assert (index == -1).all()  # a constant image is similar to nothing


def test_despeckle_pulls_back_changed_pixels_and_keeps_edges() -> None:
    x = np.zeros((1, 12, 12), np.float32)
    x[0, :, 6:] = 200.0  # an edge
    x[0, 4:6, 6] = 120.0  # and a short notch along it
    speckled = x.copy()
    speckled[0, 2, 2] = 255.0  # an isolated pixel
    speckled[0, 9, 2:4] = 180.0  # two side by side
    np.testing.assert_array_equal(despeckle(speckled), despeckle(x))
    np.testing.assert_array_equal(despeckle(x)[0, :, 5:8], x[0, :, 5:8])


@pytest.mark.parametrize("kind", ["jpeg90", "resized", "5_pixels"])
def test_copies_reach_the_default_threshold_and_distinct_images_do_not(kind: str) -> None:
    from tasks.config import ValidateParams

    threshold = ValidateParams().near_duplicate_similarity
    rng = np.random.default_rng(3)
    images = blob_images(100, 28, rng)
    change = {"jpeg90": jpeg, "resized": resized, "5_pixels": lambda im: pixels_changed(im, rng)}[kind]
    copies = np.stack([change(im) for im in images[:20]])
    index, sim = nearest(signatures(copies), signatures(images), threshold)
    assert index.tolist() == list(range(20)), sim
    _, sim = nearest_earlier(signatures(images), 0.0)
    assert sim.max() < threshold - 0.01  # 100 distinct images: none close
