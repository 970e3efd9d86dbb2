"""The fine-tuning arms: the arm that ships is chosen on validation only, every arm gets the same
budget, tune is reproducible, and the registered model's card says what won and whether
pretraining paid off -- a baseline that wins on validation is what gets registered."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tasks import paths
from tasks.arms import ARMS, arm_config, choose
from tasks.config import FinetuneParams, TuneParams
from tests.tasks.test_stages import BEST, FRACTIONS, finetune_params


def scores(**val_test: tuple[float, float]) -> dict[str, dict[str, float]]:
    return {arm: {"val_top1": v, "test_top1": t} for arm, (v, t) in val_test.items()}


def test_the_validation_best_ships_not_the_test_best() -> None:
    arms = scores(ssl_finetune=(0.70, 0.95), ssl_fixmatch=(0.72, 0.60), supervised=(0.80, 0.50), fixmatch=(0.75, 0.99))
    choice = choose(arms)
    assert choice["selected"] == "supervised"  # best on validation, worst on test
    assert choice["pretraining_paid_off"] is False
    assert choice["best_ssl_arm"] == "ssl_fixmatch" and choice["best_baseline_arm"] == "supervised"
    assert choose(scores(ssl_finetune=(0.9, 0.1), supervised=(0.8, 0.9)))["pretraining_paid_off"] is True


def test_ties_and_missing_validation_go_to_the_first_arm() -> None:
    assert choose(scores(ssl_finetune=(0.8, 0.1), supervised=(0.8, 0.9)))["selected"] == "ssl_finetune"
    nan = math.nan
    assert choose(scores(ssl_finetune=(nan, 0.1), supervised=(nan, 0.9)))["selected"] == "ssl_finetune"
    assert choose(scores(supervised=(0.5, 0.5)))["pretraining_paid_off"] is None  # nothing to compare with


def test_every_arm_gets_the_same_budget() -> None:
    tuned = {"lr": 1e-3, "weight_decay": 1e-4, "epochs": 3, "encoder_lr_scale": 0.3}
    cfg = FinetuneParams()
    configs = {arm: arm_config(arm, tuned, cfg, batch_size=64, min_steps=50, seed=2) for arm in ARMS}
    for c in configs.values():
        assert (c.epochs, c.batch_size, c.min_steps, c.seed, c.lr) == (3, 64, 50, 2, 1e-3)
    assert configs["ssl_fixmatch"].mu == configs["fixmatch"].mu == cfg.fixmatch.mu
    assert configs["ssl_fixmatch"].threshold == cfg.fixmatch.threshold == 0.95  # FixMatch's paper value
    tune = TuneParams()
    assert set(tune.search_space) == set(ARMS)  # a search space for every arm, the same epochs and trials for all


def test_distillation_needs_its_teacher_arm() -> None:
    with pytest.raises(ValueError, match="ssl_finetune"):
        FinetuneParams(arms=["ssl_distill", "supervised"])
    assert FinetuneParams(arms=["supervised", "ssl_distill", "ssl_finetune"]).arms == ["ssl_finetune", "ssl_distill",
                                                                                       "supervised"]


def test_tune_twice_gives_the_same_configs(pretrained: Path) -> None:
    """Same params and data: the same tuned configs and validation scores, to the last digit --
    whichever warm (reused) worker process ran a trial. Both searches run on one Ray instance,
    which tune leaves running because it did not start it."""
    import ray

    from tasks.tune import tune_stage

    cfg = TuneParams(label_fraction=0.5, num_samples=2, epochs=[1, 2], batch_size=16, max_concurrent_trials=2)
    ft = finetune_params(arms=["ssl_finetune", "ssl_distill", "supervised"])  # ssl_distill: a second round
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        first = tune_stage(cfg, ft, progress=False, log_mlflow=False).best
        assert ray.is_initialized()  # the caller's Ray: left running
        report = json.loads(paths.TUNE_REPORT.read_text())
        second = tune_stage(cfg, ft, progress=False, log_mlflow=False).best
    finally:
        ray.shutdown()
    assert first == second
    assert json.loads(paths.TUNE_REPORT.read_text()) == report
    assert [(t["arm"], t["draw"]) for t in report["trials"]] == [
        (arm, draw) for arm in ("ssl_finetune", "ssl_distill", "supervised") for draw in (0, 1)]  # by arm and draw
    assert all(t["encoder_lr_scale"] in (0.1, 0.3) for t in report["trials"] if t["arm"] == "ssl_finetune")
    assert len({t["lr"] for t in report["trials"]}) == 6  # a real search: every trial drew its own lr
    assert sorted(p.name for p in paths.RAY_RESULTS.iterdir() if p.is_dir()) == ["tune", "tune-2"]  # the student's round after


def test_finetune_takes_the_tuned_trials_model_where_it_would_train_the_same(pretrained: Path) -> None:
    """At ``tune.label_fraction`` (same seeds, validation share, batch and steps) finetune trains
    exactly what each arm's best trial trained: it takes that trial's model (Tune's checkpoint)
    instead, bit for bit what the trial's training computes; at another fraction, or with a
    recipe that differs (here more steps), it trains. The distilling arm's teacher is the same
    model in both stages."""
    import torch

    from ssl_models import checkpoint
    from tasks.finetune import finetune
    from tasks.models import load_classifier
    from tasks.tune import train_trial, trial_data, tune_stage

    arms = ["ssl_finetune", "ssl_distill", "supervised"]
    cfg = TuneParams(label_fraction=0.5, num_samples=2, epochs=[2, 3], batch_size=16, max_concurrent_trials=2)
    ft = finetune_params(arms=arms)  # at 0.5: 80 train labels, 5 steps an epoch, min_steps 8 below every choice
    best = tune_stage(cfg, ft, progress=False, log_mlflow=False).best
    kept = checkpoint.load(paths.TUNED_MODELS)["arms"]
    assert set(kept) == set(arms) and all(kept[arm]["draw"] == best[arm]["draw"] for arm in arms)

    report = finetune(ft, progress=False, log_mlflow=False).fractions
    for arm in arms:
        assert report["0.5"]["arms"][arm]["model"] == f"tune trial #{best[arm]['draw']}"
        assert report["0.1"]["arms"][arm]["model"] == "trained here"
        model, _ = load_classifier(paths.classifier_path(arm, 0.5))
        assert all(torch.equal(v, kept[arm]["state_dict"][k]) for k, v in model.state_dict().items())
        assert report["0.5"]["arms"][arm]["epochs"] == best[arm]["epochs"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a trial runs
    try:
        data = trial_data(cfg, ft)
        data["teachers"]["ssl_finetune"] = kept["ssl_finetune"]["state_dict"]
        for arm in ("ssl_finetune", "ssl_distill"):
            _, model = train_trial({"arm": arm, **best[arm]}, data)
            assert all(torch.equal(v, kept[arm]["state_dict"][k]) for k, v in model.state_dict().items()), arm
    finally:
        torch.set_num_threads(threads)

    longer = finetune(finetune_params(arms=["supervised"], min_steps=20), progress=False, log_mlflow=False).fractions
    assert longer["0.5"]["arms"]["supervised"]["model"] == "trained here"  # 20 steps, not the trial's 10 or 15


def _resave(model, blob: dict, path: Path, **changes) -> None:
    """Save ``model`` back to ``path`` with the rest of its saved ``blob`` (``load_classifier``'s), ``changes`` applied."""
    from tasks.models import save_classifier

    extra = {k: v for k, v in blob.items() if k not in ("spec", "num_classes", "state_dict")}
    save_classifier(model, blob["spec"], blob["num_classes"], path, {**extra, **changes})


def test_a_baseline_that_wins_on_validation_is_registered_and_says_so(pretrained: Path, monkeypatch) -> None:
    import mlflow
    from mlflow import MlflowClient

    from tasks.config import EvaluateParams, RegisterParams
    from tasks.evaluate import evaluate
    from tasks.finetune import finetune
    from tasks.models import load_classifier
    from tasks.register import register
    from tasks.tracking import setup_mlflow

    paths.BEST_CONFIG.parent.mkdir(parents=True)
    paths.BEST_CONFIG.write_text(json.dumps(BEST))
    ft = finetune_params(arms=["ssl_finetune", "supervised"])
    finetune(ft, progress=False, log_mlflow=False)
    # make the baseline the validation-best at the largest fraction, whatever the tiny run gave
    for arm, val in (("ssl_finetune", 0.1), ("supervised", 0.9)):
        model, blob = load_classifier(paths.classifier_path(arm, max(FRACTIONS)))
        _resave(model, blob, paths.classifier_path(arm, max(FRACTIONS)), val_top1=val)
    metrics = evaluate(EvaluateParams(embedding_plot_images=10), ft, log_mlflow=False)
    assert metrics["selected_arm"] == "supervised" and metrics["pretraining_paid_off"] is False
    setup_mlflow()  # the test's own store and experiment, as a stage run sets them
    with mlflow.start_run():
        result = register(RegisterParams(), ft, params_digest="test")
    client = MlflowClient()
    mv = client.get_model_version("sslpipe-classifier", result.version)
    assert mv.tags["arm"] == "supervised" and mv.tags["pretraining_paid_off"] == "false"
    assert mv.tags["label_fraction"] == "0.5" and mv.tags["data.version"]
    assert mv.tags["val_top1.supervised"] == "0.9000" and mv.tags["val_top1.ssl_finetune"] == "0.1000"
    assert "test_top1.ssl_finetune" in mv.tags and "protocol" in mv.tags
    assert "did NOT pay off" in mv.description and "supervised" in mv.description
    assert result.alias == "champion"  # no champion before: this one is
    assert result.value == result.challenger_top1  # evaluate's test top-1 is the served model's (fp32, pyfunc)


def test_evaluate_scores_the_classifiers_as_they_are_served(pretrained: Path) -> None:
    """The test top-1 in reports/metrics.json (the model card's) is the served model's: the
    classifier in fp32 on [0, 1] images (tasks/served_model.py), not the training precision. A head
    whose class-1 row is class 0's scaled by 1 + 2**-12 tells them apart: in fp32 class 1 wins
    wherever class 0's logit is positive (half the images: its bias is minus the median), class 0
    elsewhere; in bf16 the two rows round to one and class 0 wins the tie everywhere."""
    import torch

    from ssl_models.classifier import predict_logits
    from tasks.config import EvaluateParams
    from tasks.dataset import load_dataset
    from tasks.evaluate import evaluate
    from tasks.finetune import finetune
    from tasks.models import load_classifier

    paths.BEST_CONFIG.parent.mkdir(parents=True)
    paths.BEST_CONFIG.write_text(json.dumps(BEST))
    ft = finetune_params(arms=["supervised"])
    finetune(ft, progress=False, log_mlflow=False)
    path = paths.classifier_path("supervised", max(FRACTIONS))
    model, blob = load_classifier(path)
    x_test, y_test = load_dataset().split("test")
    model.eval()
    with torch.no_grad():
        head = model.head
        head.bias[0] = -(model.encoder(x_test.float() / 255) @ head.weight[0]).median()
        head.weight[1], head.bias[1] = head.weight[0] * (1 + 2**-12), head.bias[0] * (1 + 2**-12)
        head.weight[2:], head.bias[2:] = 0, -1e4  # the other classes never win
    _resave(model, blob, path)
    with torch.no_grad():
        served = (model(x_test.float() / 255).argmax(1) == y_test).sum().item() / len(y_test)  # as MLflow serves it
    bf16 = (predict_logits(model, x_test, precision="bf16").argmax(1) == y_test).sum().item() / len(y_test)
    assert bf16 != served  # the case tells the precisions apart

    metrics = evaluate(EvaluateParams(embedding_plot_images=10), ft, log_mlflow=False)
    assert metrics["fractions"][f"{max(FRACTIONS):g}"]["arms"]["supervised"]["test_top1"] == served


def test_each_arm_draws_from_its_own_stream_and_the_costliest_trials_start_first() -> None:
    """Adding an arm changes no other arm's configurations (the README's figures stay comparable),
    and one Tuner takes every arm's trials, FixMatch's long ones first: the last to finish are short."""
    from tasks.arms import relative_step_cost
    from tasks.tune import costliest_first, draw_configs, waves

    cfg = TuneParams(num_samples=3, epochs=[2, 6], seed=4)
    alone = draw_configs(cfg, "supervised")
    assert [c["draw"] for c in alone] == [0, 1, 2] and len({c["lr"] for c in alone}) == 3
    assert draw_configs(cfg, "supervised") == alone  # seeded
    assert draw_configs(TuneParams(num_samples=3, epochs=[2, 6], seed=5), "supervised") != alone
    assert draw_configs(cfg, "fixmatch") != alone  # another arm, another stream
    ft = FinetuneParams()
    assert relative_step_cost("fixmatch", ft) == 1 + 2 * ft.fixmatch.mu > relative_step_cost("ssl_finetune", ft) == 1
    order = costliest_first([*alone, *draw_configs(cfg, "fixmatch")], ft)
    cost = [c["epochs"] * relative_step_cost(c["arm"], ft) for c in order]
    assert cost == sorted(cost, reverse=True) and order[0]["arm"] == "fixmatch" and order[-1]["arm"] == "supervised"
    assert waves(["ssl_finetune", "ssl_distill", "supervised", "fixmatch"]) == [
        ["ssl_finetune", "supervised", "fixmatch"], ["ssl_distill"]]  # a student after its teacher's round
    assert waves(["supervised"]) == [["supervised"]]
