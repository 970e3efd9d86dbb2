"""Peak memory of ingest and of pretraining as the data grow, and ingest's decoding speed.

Fashion-MNIST train images written as a JPEG folder (``<class>/<i>.jpg``, quality 95; the writing
is setup, not measured) at 1x and 4x size (the first N and 4N images). For each size:

- **ingest** (``tasks.ingest``, the image-folder source, 28x28 grayscale) with 1 and 2 decoding
  processes: images/s, and the peak RSS of the ingest process and of its largest worker;
- **pretrain** (SimCLR, the engine's loop, a fixed number of steps) on the split read into RAM
  (the default below ``ingest.in_memory_max_mb``) and streamed from the shards
  (``in_memory_max_mb: 0``): images/s and peak RSS;
- **evaluate**'s data path, in RAM and streamed: features of the labeled train bank and the test
  split (a random-init encoder), kNN on them and on raw pixels (chunked on both sides): seconds,
  the two top-1 figures (equal in both modes) and peak RSS.

Each measurement runs in a fresh process, so each peak is its own. The goal: memory nearly flat
while the data grow 4x on the streamed path, and no speed lost by the default path.

    flock /tmp/sslpipe-bench.lock nice -n 15 .venv/bin/python bench/memory.py --sizes 10000 40000
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project, run from anywhere


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------ measured, in a child
def child_ingest(folder: str, out: str, workers: int, shard_mb: float) -> dict:
    from tasks.config import IngestParams
    from tasks.ingest import ingest

    cfg = IngestParams(source="image_folder", workers=workers, shard_mb=shard_mb, in_memory_max_mb=0,
                       image_folder={"train_dir": folder, "image_size": 28, "channels": 1, "test_fraction": 0.1})
    start = time.perf_counter()
    result = ingest(cfg, Path(out))
    seconds = time.perf_counter() - start
    return {"images": result.decoded, "seconds": seconds,
            "peak_mb": peak_mb(), "worker_peak_mb": peak_mb(resource.RUSAGE_CHILDREN) if workers > 1 else None}


def child_pretrain(dataset: str, in_memory_max_mb: float, steps: int, batch_size: int) -> dict:
    import torch

    from ssl_models.engine import train
    from tasks.config import PretrainParams
    from tasks.dataset import load_dataset
    from tasks.pretrain import build_method, train_config

    torch.set_num_threads(1)
    images, _ = load_dataset(Path(dataset), require_validation=False, in_memory_max_mb=in_memory_max_mb).split("train")
    cfg = PretrainParams(method="simclr", epochs=1, batch_size=batch_size, images_per_epoch=steps * batch_size,
                         knn_monitor_images=0, precision="fp32", channels_last=False, device="cpu", seed=0)
    method, _ = build_method(cfg, images)
    result = train(method, images, train_config(cfg), None, progress=False)
    return {"pool": type(images).__name__, "train_images": int(images.shape[0]), "images_per_s": result.images_per_sec,
            "peak_mb": peak_mb()}


def child_evaluate(dataset: str, in_memory_max_mb: float) -> dict:
    """The evaluate stage's data path: features of the labeled train bank and the test split, kNN on
    them and on raw pixels (a seeded random-init encoder: the memory does not depend on the weights;
    the stage's classifiers are left out)."""
    import torch

    from ssl_models.evaluation import FlatPixels, extract_features, knn_top1
    from tasks.dataset import load_dataset
    from tasks.models import build_encoder, encoder_spec

    torch.set_num_threads(1)
    data = load_dataset(Path(dataset), require_validation=False, in_memory_max_mb=in_memory_max_mb)
    x_bank, y_bank = data.split("train", labeled=True)
    x_test, y_test = data.split("test")
    torch.manual_seed(0)
    encoder = build_encoder(encoder_spec("small_cnn", int(x_bank.shape[1]), 32, [0.3], [0.3]))
    start = time.perf_counter()
    features = knn_top1(extract_features(encoder, x_bank), y_bank, extract_features(encoder, x_test), y_test,
                        data.num_classes)
    pixels = knn_top1(FlatPixels(x_bank), y_bank, FlatPixels(x_test), y_test, data.num_classes)
    return {"pool": type(x_bank).__name__, "bank_images": int(x_bank.shape[0]), "test_images": int(x_test.shape[0]),
            "seconds": time.perf_counter() - start, "knn_features": features, "knn_pixels": pixels, "peak_mb": peak_mb()}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ the setup
def write_jpeg_folder(root: Path, n: int, data_dir: Path) -> None:
    """The first ``n`` Fashion-MNIST train images as ``root/<class>/<i>.jpg``."""
    from PIL import Image

    from ssl_models.data import FASHION_MNIST_CLASSES, read_fashion_mnist

    images, labels = read_fashion_mnist(data_dir)["train"]
    if n > len(images):
        raise SystemExit(f"--sizes: {n} images asked for, Fashion-MNIST's train split has {len(images)}")
    for c, name in enumerate(FASHION_MNIST_CLASSES):
        (root / name.replace("/", "-")).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        name = FASHION_MNIST_CLASSES[labels[i]].replace("/", "-")
        Image.fromarray(images[i, 0]).save(root / name / f"{i:06d}.jpg", quality=95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 40000], help="images per run (1x, 4x)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="ingest's decoding processes")
    parser.add_argument("--shard-mb", type=float, default=1.0, help="ingest.shard_mb (1: 1,337 images a shard)")
    parser.add_argument("--steps", type=int, default=20, help="pretrain steps per run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--work-dir", type=Path, default=None, help="where the folders and datasets go (default: a temp dir)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "ingest":
            out = child_ingest(rest[0], rest[1], int(rest[2]), float(rest[3]))
        elif kind == "pretrain":
            out = child_pretrain(rest[0], float(rest[1]), int(rest[2]), int(rest[3]))
        else:
            out = child_evaluate(rest[0], float(rest[1]))
        print(json.dumps(out))
        return

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import FASHION_MNIST_DIR, setup_lines

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sslpipe-memory-"))
    print("\n".join(setup_lines(torch.device("cpu"))))
    print(f"data:        Fashion-MNIST train ({FASHION_MNIST_DIR}) as JPEG folders (quality 95) of {args.sizes} images, "
          f"in {work}")
    print(f"ingest:      image_folder, 28x28x1, test_fraction 0.1, shard_mb {args.shard_mb:g}, workers {args.workers}")
    print(f"pretrain:    SimCLR small_cnn fp32, 1 thread, batch {args.batch_size}, {args.steps} steps, no checkpoint; "
          f"in RAM (in_memory_max_mb default) vs streamed (in_memory_max_mb 0)")
    print("each figure from a fresh process; peak RSS = ru_maxrss (torch and pandas imported: ~800 MB before any data); "
          "vs 1x = this peak - the peak of the same run on the first size\n")
    ingest_rows, pretrain_rows, evaluate_rows = [], [], []
    try:
        for n in args.sizes:
            folder = work / f"jpeg-{n}"
            if not folder.exists():
                write_jpeg_folder(folder, n, FASHION_MNIST_DIR)
            for workers in args.workers:
                out = work / f"dataset-{n}-{workers}"
                shutil.rmtree(out, ignore_errors=True)  # a fresh ingest, nothing to reuse
                r = run_child("ingest", str(folder), str(out), str(workers), str(args.shard_mb))
                ingest_rows.append((n, workers, r))
            dataset = work / f"dataset-{n}-{args.workers[0]}"
            for label, limit in (("in RAM", 1024.0), ("streamed", 0.0)):
                r = run_child("pretrain", str(dataset), str(limit), str(args.steps), str(args.batch_size))
                pretrain_rows.append((n, label, r))
                evaluate_rows.append((n, label, run_child("evaluate", str(dataset), str(limit))))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    first: dict[object, float] = {}
    print("| ingest images | processes | images/s | peak RSS MB | vs 1x MB | largest worker MB (forked: shares the parent's pages) |")
    print("|---|---|---|---|---|---|")
    for n, workers, r in ingest_rows:
        worker = f"{r['worker_peak_mb']:.0f}" if r["worker_peak_mb"] else "-"
        base = first.setdefault(("ingest", workers), r["peak_mb"])
        print(f"| {n:,} | {workers} | {r['images'] / r['seconds']:,.0f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - base:+.0f} | {worker} |")
    print()
    print("| pretrain pool | train images | pool | images/s | peak RSS MB | vs 1x MB |")
    print("|---|---|---|---|---|---|")
    for n, label, r in pretrain_rows:
        base = first.setdefault(("pretrain", label), r["peak_mb"])
        print(f"| {label} | {r['train_images']:,} | {r['pool']} | {r['images_per_s']:,.0f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - base:+.0f} |")
    print()
    print("| evaluate pool | bank / test images | pool | seconds | kNN top-1 features / raw pixels | peak RSS MB | vs 1x MB |")
    print("|---|---|---|---|---|---|---|")
    for n, label, r in evaluate_rows:
        base = first.setdefault(("evaluate", label), r["peak_mb"])
        print(f"| {label} | {r['bank_images']:,} / {r['test_images']:,} | {r['pool']} | {r['seconds']:.1f} | "
              f"{r['knn_features']:.4f} / {r['knn_pixels']:.4f} | {r['peak_mb']:.0f} | {r['peak_mb'] - base:+.0f} |")


if __name__ == "__main__":
    main()
