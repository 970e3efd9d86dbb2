"""Every stage on a dataset streamed from its shards (``ingest.in_memory_max_mb: 0``, what a
dataset bigger than memory gets) gives the numbers it gives on the same dataset read into RAM:
pretrain (DeepCluster, whose epoch start reads the whole pool), finetune (FixMatch arms draw their
unlabeled batches from the pool), evaluate (features and raw-pixel kNN in chunks) and register
(the drift reference, the promotion gate on the test split, the retrain flow's drift score)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_models.data.shards import ShardedImages, ShardReader, write_shards
from ssl_models.evaluation import FlatPixels, knn_predict
from tasks import paths
from tasks.config import EvaluateParams, RegisterParams, ValidateParams
from tasks.dataset import load_dataset
from tasks.models import load_encoder
from tests.tasks.conftest import SIDE, ingest_params, tiny_pretrain_params
from tests.tasks.test_stages import BEST, finetune_params

ARMS = ["ssl_finetune", "ssl_fixmatch", "fixmatch"]  # the pool-reading arms, and a baseline to compare with
DEEPCLUSTER = {"deepcluster": {"hidden_dim": 32, "out_dim": 16, "n_clusters": 10, "kmeans_iterations": 3}}


# ------------------------------------------------------------------------------ the pieces
def test_knn_over_bank_chunks_equals_knn_over_the_whole_bank() -> None:
    g = torch.Generator().manual_seed(0)
    bank, test = torch.randn(300, 8, generator=g), torch.randn(70, 8, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    whole = knn_predict(bank, labels, test, 5, k=20)
    for size in (7, 64, 300):  # chunks smaller than k, uneven, one chunk
        chunks = [bank[a : a + size] for a in range(0, 300, size)]
        queries = [test[a : a + 16] for a in range(0, 70, 16)]
        assert torch.equal(knn_predict(chunks, labels, queries, 5, k=20), whole), size
        assert torch.equal(knn_predict(bank, labels, test, 5, k=20, bank_chunk=size), whole), size  # a tensor bank in chunks
    with pytest.raises(TypeError, match="re-iterable"):
        knn_predict(iter(chunks), labels, test, 5)  # spent after the first query chunk: refused
    with pytest.raises(ValueError, match="300 rows and 299 labels"):
        knn_predict(chunks, labels[:-1], test, 5)
    # a bank with fewer rows than k votes with all of them
    assert torch.equal(knn_predict([bank[:3], bank[3:5]], labels[:5], test, 5, k=20), knn_predict(bank[:5], labels[:5], test, 5))


def test_a_streamed_pool_gives_deepcluster_and_raw_pixel_knn_what_the_tensor_gives(tmp_path: Path) -> None:
    from ssl_models.augment import ViewAugment
    from ssl_models.methods.deepcluster import DeepCluster, image_keys
    from tasks.models import build_encoder, encoder_spec

    images = torch.randint(0, 256, (90, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    write_shards(tmp_path, images.numpy(), rows=13)  # 7 shards
    pool = ShardedImages(ShardReader.open(tmp_path))
    assert [len(p) for p in pool.tensor_split(4)] == [len(t) for t in images.tensor_split(4)]
    assert torch.equal(image_keys(pool, chunk=16), image_keys(images))
    labels = torch.arange(90) % 5
    assert torch.equal(knn_predict(FlatPixels(pool, chunk=16), labels, FlatPixels(pool.subset(np.arange(30)), chunk=8), 5),
                       knn_predict(images.flatten(1).float(), labels, images[:30].flatten(1).float(), 5))

    def labelled(x: torch.Tensor | ShardedImages) -> DeepCluster:
        torch.manual_seed(0)
        method = DeepCluster(build_encoder(encoder_spec("small_cnn", 1, 4, [0.5], [0.25])), ViewAugment(),
                             hidden_dim=16, out_dim=8, n_clusters=5, kmeans_iterations=3)
        method.on_epoch_start(1, x)
        return method

    in_ram, streamed = labelled(images), labelled(pool)
    for name in ("centroids", "class_weights", "pool_keys", "pool_labels"):
        assert torch.equal(getattr(streamed, name), getattr(in_ram, name)), name


# ------------------------------------------------------------------------ the stages, end to end
def _run_stages(root: Path, fashion_dir: Path, in_memory_max_mb: float, digest: str,
                monkeypatch: pytest.MonkeyPatch) -> dict:
    """ingest -> validate -> pretrain -> finetune -> evaluate -> register in ``root``; what each wrote."""
    import mlflow

    from tasks.evaluate import evaluate
    from tasks.finetune import finetune
    from tasks.ingest import ingest
    from tasks.pretrain import pretrain
    from tasks.register import register
    from tasks.tracking import setup_mlflow
    from tasks.validate import validate

    root.mkdir()
    monkeypatch.chdir(root)
    # 23 images a shard: every chunk read below crosses shard boundaries
    ingest(ingest_params(fashion_dir, in_memory_max_mb=in_memory_max_mb, shard_mb=23 * SIDE * SIDE / 2**20))
    validate(ValidateParams())
    pretrain(tiny_pretrain_params(method="deepcluster", method_args=DEEPCLUSTER), progress=False, log_mlflow=False)
    paths.BEST_CONFIG.parent.mkdir(parents=True)
    paths.BEST_CONFIG.write_text(json.dumps(BEST))
    ft = finetune_params(arms=ARMS, label_fractions=[0.5])
    finetuned = finetune(ft, progress=False, log_mlflow=False).fractions
    metrics = evaluate(EvaluateParams(embedding_plot_images=20), ft, log_mlflow=False)
    setup_mlflow()
    with mlflow.start_run():
        registered = register(RegisterParams(), ft, params_digest=digest)  # its own version: both log a reference
    reference = mlflow.artifacts.download_artifacts(run_id=mlflow.last_active_run().info.run_id,
                                                    artifact_path="drift/reference_images.npy", dst_path=str(root / "dl"))
    encoder = load_encoder(paths.ENCODER)[0].state_dict()
    return {"finetune": finetuned, "metrics": metrics, "registered": registered, "encoder": encoder,
            "reference": np.load(reference)}


def test_every_stage_gives_the_same_results_on_the_streamed_dataset(tmp_path: Path, fashion_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from tasks.drift import champion_drift
    from tasks.registry import current_champion

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels in both runs
    try:
        in_ram = _run_stages(tmp_path / "in_ram", fashion_dir, 1024, "in-ram", monkeypatch)
        streamed = _run_stages(tmp_path / "streamed", fashion_dir, 0, "streamed", monkeypatch)
    finally:
        torch.set_num_threads(threads)

    data = load_dataset()  # the streamed project: every split, labeled or not, is a pool
    assert all(isinstance(data.split(name, labeled=labeled)[0], ShardedImages)
               for name in ("train", "test") for labeled in (False, True))
    assert all(torch.equal(streamed["encoder"][k], v) for k, v in in_ram["encoder"].items())
    assert streamed["finetune"] == in_ram["finetune"]
    assert streamed["metrics"] == in_ram["metrics"]
    assert streamed["metrics"]["knn_top1_raw_pixels"] > 0.9  # the synthetic classes separate in pixel space
    np.testing.assert_array_equal(streamed["reference"], in_ram["reference"])
    # the streamed version was gated against the in-RAM one on the streamed test split: the same model, the same score
    r, s = in_ram["registered"], streamed["registered"]
    assert (r.alias, s.alias, s.promoted) == ("champion", "challenger", False)
    assert s.challenger_top1 == s.champion_top1 == r.challenger_top1
    # the retrain flow's drift score: a sample read from the streamed pool, the one the tensor gives
    champion = current_champion(MlflowClient(), RegisterParams().model_name)
    pool, _ = data.split("train", stream=True)
    assert champion_drift(champion, pool, 50) == champion_drift(champion, pool.load(), 50)
