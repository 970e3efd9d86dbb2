"""``augment-preview``: a grid of images and their augmented views, to check the augmentation by eye."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cli.app import SetOption, app, console, enter_project, fail

@app.command("augment-preview")
def augment_preview(
    method: Annotated[Optional[str], typer.Option("--method", "-m", metavar="METHOD", help="SSL method whose views to show (default: pretrain.method in params.yaml).")] = None,
    n: Annotated[int, typer.Option("--n", min=1, max=64, metavar="N", help="Number of images (rows).")] = 8,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="PNG", help="PNG to write (relative to the current directory).")] = Path("reports/plots/augment_preview.png"),
    set_: SetOption = None,
    params_file: Annotated[Path, typer.Option("--params", "-p", metavar="FILE", help="Parameters file (augmentation, method arguments, seed).")] = Path("params.yaml"),
) -> None:
    """Write a grid of original images and their augmented views, to check the augmentation by eye.

    Reads the train split of data/dataset (no validation needed); without a dataset yet, the
    Fashion-MNIST IDX files at ingest.fashion_mnist_dir.
    """
    out = out.resolve()  # relative to where the command was typed
    enter_project()
    from tasks.config import ParamsError, load_params

    try:
        params = load_params(params_file, list(set_ or []))
    except ParamsError as e:
        fail(str(e), 2)
    from ssl_models.data import DataError, read_fashion_mnist
    from ssl_models.methods import method_class
    from tasks import plots
    from tasks.dataset import DatasetError, load_dataset
    from tasks.pretrain import augment_preview as preview_figure
    from tasks.pretrain import build_method
    cfg = params.pretrain
    try:
        images, source = load_dataset(require_validation=False).split("train")[0], "data/dataset"
    except DatasetError:
        try:
            data = read_fashion_mnist(params.ingest.fashion_mnist_dir)
        except DataError as e:
            fail(f"no dataset in data/dataset and no Fashion-MNIST files: {e}; run `sslpipe stage ingest` first")
        import torch

        images, source = torch.from_numpy(data["train"][0]), params.ingest.fashion_mnist_dir
    if len(images) == 0:
        fail(f"{source}: no train images")
    name = method or cfg.method
    try:
        backbones = method_class(name).backbones
        backbone = cfg.backbone if not backbones or cfg.backbone in backbones else backbones[0]  # MAE: views only
        built, _ = build_method(cfg.model_copy(update={"method": name, "backbone": backbone}), images)
    except ValueError as e:
        fail(str(e))
    plots.save(preview_figure(built, images[:n], cfg.seed), out)
    console.print(f"wrote {out}: {min(n, len(images))} images from {source} and their {name} views", highlight=False)
