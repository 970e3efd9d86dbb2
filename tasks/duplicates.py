"""Near-duplicate search for data validation: small perceptual signatures per image, and for
every image a similar-enough image in another set (or earlier in the same set), fast enough for
100k+ images on a few CPU cores and in bounded memory.

An image has two signatures, each its grayscale Gaussian-pooled to 8x8, minus its mean and divided
by its norm, so that the cosine similarity of two images is a dot product; the second is taken
after "despeckling" (pixels that stand out from their neighbours are pulled back). A pair counts
by its better similarity: the plain signature is the one that a JPEG re-encoding or a resize
barely moves, the despeckled one the one that a few changed pixels barely move (measured on
Fashion-MNIST: the comments of ``ValidateParams`` in ``tasks/config.py``). Brightness and
contrast do not count. A constant image has zero signatures, similar to nothing (the
degenerate-image check reports those; an exact hash catches their copies).

The search compares only pairs that can reach the threshold: for unit vectors u, v and a unit
axis a, |a.u - a.v| <= |u - v| = sqrt(2 - 2 u.v), so after sorting both sets by their projection
on the data's first principal axis, a query's matches lie in a window of that sorted order.
"""

from __future__ import annotations

import numpy as np

SIDE = 8  # signature side: 64 numbers per image
SIGMA = 0.7  # Gaussian pooling width in output cells (area pooling, ~0.3, tolerates resizing less)
SPECKLE = 0.3  # despeckling pulls back pixels standing out by more than this share of the image's range


def pooling_matrix(n_in: int, n_out: int, sigma: float = SIGMA) -> np.ndarray:
    """(n_out, n_in) weights: output cell ``o`` is a Gaussian-weighted mean of the input pixels
    around its centre, the Gaussian ``sigma`` output cells wide (rows sum to 1)."""
    scale = n_in / n_out
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    weights = np.exp(-0.5 * ((np.arange(n_in)[None, :] - centres[:, None]) / (sigma * scale)) ** 2)
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def despeckle(x: np.ndarray, margin: float = SPECKLE) -> np.ndarray:
    """Pull back the pixels of ``x`` (B, H, W) that stand out from their 4 neighbours: one above the
    second largest neighbour by more than ``margin`` times the image's range is set to it, one below
    the second smallest likewise. A changed pixel, or two side by side, goes back to about its old
    value; edges, lines and textures stay (line ends lose a pixel)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    up, down, left, right = p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]
    lo1, hi1, lo2, hi2 = np.minimum(up, down), np.maximum(up, down), np.minimum(left, right), np.maximum(left, right)
    second_high = np.maximum(np.minimum(hi1, hi2), np.maximum(lo1, lo2))  # 2nd largest of the four
    second_low = np.minimum(np.maximum(lo1, lo2), np.minimum(hi1, hi2))  # 2nd smallest
    flat = x.reshape(len(x), -1)
    m = (margin * (flat.max(1) - flat.min(1)))[:, None, None]
    return np.where(x > second_high + m, second_high, np.where(x < second_low - m, second_low, x))


def signatures(images: np.ndarray, side: int = SIDE, chunk: int = 1024) -> np.ndarray:
    """The plain and the despeckled signature of each image, read in chunks (a memory map is never
    loaded whole).

    Args:
        images: (N, C, H, W), any dtype and value range; non-finite pixels count as 0.
    Returns:
        float32 (2, N, side * side): unit norm and zero mean, or zero for a constant image.
    """
    n, _, h, w = images.shape
    rows, cols = pooling_matrix(h, side), pooling_matrix(w, side)
    out = np.empty((2, n, side * side), np.float32)
    for start in range(0, n, chunk):
        x = np.asarray(images[start : start + chunk], dtype=np.float32)
        x = np.where(np.isfinite(x), x, 0.0).mean(1)  # grayscale: BxHxW
        for kind, y in enumerate((x, despeckle(x))):
            flat = y.reshape(len(y), -1)
            constant = (flat.max(1) == flat.min(1))[:, None]  # pooled, only rounding noise would be left
            z = (rows @ y @ cols.T).reshape(len(y), -1)  # Bx(side*side)
            z -= z.mean(1, keepdims=True)
            norm = np.linalg.norm(z, axis=1, keepdims=True)
            out[kind, start : start + len(y)] = np.where(constant, 0.0, z / np.where(constant, 1.0, norm))
    return out


def nearest(queries: np.ndarray, pool: np.ndarray, threshold: float, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For every query image, its most similar pool image if that similarity reaches ``threshold``.

    Args:
        queries: (K, Q, D) and pool: (K, P, D) signatures of K kinds (unit norm or zero); a pair's
            similarity is the largest over the kinds.
        threshold: the cosine similarity that makes a match.
    Returns:
        index (Q,) int64 into ``pool``, -1 where no pool image reaches ``threshold``, and the
        similarity (Q,) float32 of that match (-inf where none).
    """
    return _best_of_kinds([_search(q, p, threshold, False, block) for q, p in zip(queries, pool)])


def nearest_earlier(sigs: np.ndarray, threshold: float, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For every image, its most similar image *before* it in ``sigs`` (K, N, D) if that reaches
    ``threshold``: a group of k near-copies gives k - 1 matches, one per copy after the first.

    Returns:
        index (N,) int64 into ``sigs`` (-1: none) and similarity (N,) float32 (-inf: none).
    """
    return _best_of_kinds([_search(s, s, threshold, True, block) for s in sigs])


def _best_of_kinds(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    index, best = found[0]
    for other_index, other_best in found[1:]:
        better = other_best > best
        index, best = np.where(better, other_index, index), np.where(better, other_best, best)
    return index, best


def _search(queries: np.ndarray, pool: np.ndarray, threshold: float, earlier_only: bool,
            block: int) -> tuple[np.ndarray, np.ndarray]:
    """One kind of signature: (Q, D) queries against (P, D) pool."""
    index = np.full(len(queries), -1, np.int64)
    best = np.full(len(queries), -np.inf, np.float32)
    if not len(queries) or not len(pool):
        return index, best
    axis = _principal_axis(pool)
    q_order, p_order = np.argsort(queries @ axis, kind="stable"), np.argsort(pool @ axis, kind="stable")
    q_sorted, p_sorted = queries[q_order], pool[p_order]
    q_key, p_key = q_sorted @ axis, p_sorted @ axis  # ascending
    radius = float(np.sqrt(max(0.0, 2.0 - 2.0 * threshold))) + 1e-4  # + float32 rounding of the keys
    for q in range(0, len(queries), block):
        q_end = min(q + block, len(queries))
        lo = np.searchsorted(p_key, q_key[q] - radius, "left")
        hi = np.searchsorted(p_key, q_key[q_end - 1] + radius, "right")
        for p in range(lo, hi, 4 * block):
            p_end = min(p + 4 * block, hi)
            sim = q_sorted[q:q_end] @ p_sorted[p:p_end].T  # QbxPb
            if earlier_only:  # the same set, sorted the same way: no image is its own match
                same = np.arange(max(q, p), min(q_end, p_end))
                sim[same - q, same - p] = -np.inf
            hit = np.flatnonzero(sim.max(1) >= threshold)  # matches are rare: find their rows first
            if not len(hit):
                continue
            r, c = np.nonzero(sim[hit] >= threshold)
            top = sim[hit[r], c]
            rows, cols = q_order[q + hit[r]], p_order[p + c]  # back to the callers' order
            if earlier_only:  # only pool rows before the query, in the callers' order, count
                keep = cols < rows
                rows, cols, top = rows[keep], cols[keep], top[keep]
            order = np.lexsort((-top, rows))  # by row, best first: keep each row's first
            rows, first = np.unique(rows[order], return_index=True)
            cols, top = cols[order][first], top[order][first]
            better = top > best[rows]
            index[rows[better]], best[rows[better]] = cols[better], top[better]
    return index, best


def _principal_axis(sigs: np.ndarray) -> np.ndarray:
    """The unit direction along which ``sigs`` spread most: sorting by it puts similar signatures
    close together."""
    centred = sigs - sigs.mean(0)
    _, vectors = np.linalg.eigh(centred.T @ centred)  # DxD; eigenvalues ascending
    return np.ascontiguousarray(vectors[:, -1], dtype=np.float32)
