"""Label efficiency over seeds: the default pipeline's fine-tuning arms (tune, finetune, evaluate:
the same stage functions ``sslpipe run`` runs), repeated for several seeds on one pretrained encoder,
printed as mean +- std per arm and label fraction, with the arm that ships at each seed.

It runs in a scratch copy of a project that has run through pretrain (``data/dataset``,
``reports/validation.json``, ``models/encoder.pt``, e.g. after ``make run``; through validate is
enough with ``--pretrain``), with that project's
``params.yaml`` and ``--set`` overrides; a seed sets ``finetune.seed`` (which labels, and training)
and ``tune.seed`` (the search). Those seeds share the project's encoder, so their spread leaves out
the encoder's own noise; with ``--pretrain`` each seed also pretrains an encoder of its own
(``pretrain.seed``; ~7 min a seed at the default params on 2 cores) and the spread includes it.
Differences under two standard deviations are ties.

    .venv/bin/python bench/label_efficiency.py --project . --seeds 0 1 2
    .venv/bin/python bench/label_efficiency.py --project . --seeds 0 1 2 --pretrain
    .venv/bin/python bench/label_efficiency.py --project /tmp/p --seeds 0 1 --set finetune.arms=[ssl_finetune,supervised]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import setup_lines

ENCODER = "models/encoder.pt"


def needs(pretrain: bool) -> list[str]:
    """What a seed copies from the project: its data, validation report and params, and its encoder
    unless the seed pretrains its own."""
    return ["data/dataset", "reports/validation.json", "params.yaml", *([] if pretrain else [ENCODER])]


def seed_overrides(seed: int, pretrain: bool) -> list[str]:
    """What a seed sets: the labels, the search and the training; with ``pretrain``, the encoder too."""
    return [f"finetune.seed={seed}", f"tune.seed={seed}", *([f"pretrain.seed={seed}"] if pretrain else [])]


def run_seed(project: Path, seed: int, overrides: list[str], out: Path | None = None, pretrain: bool = False) -> dict:
    """tune + finetune + evaluate at ``seed`` in a scratch copy of ``project`` (with ``pretrain``,
    pretrain first, at ``pretrain.seed=seed``); returns metrics.json (and copies the seed's
    ``reports/`` to ``out/seed<seed>/`` when given)."""
    from tasks.config import load_params
    from tasks.evaluate import evaluate
    from tasks.finetune import finetune
    from tasks.pretrain import pretrain as pretrain_stage
    from tasks.tune import tune_stage

    with tempfile.TemporaryDirectory(prefix=f"label-efficiency-{seed}-") as tmp:
        work = Path(tmp)
        for rel in needs(pretrain):
            src, dst = project / rel, work / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        cwd = Path.cwd()
        os.chdir(work)
        try:
            params = load_params("params.yaml", [*overrides, *seed_overrides(seed, pretrain)])
            if pretrain:
                pretrain_stage(params.pretrain, progress=False, log_mlflow=False)
            tune_stage(params.tune, params.finetune, progress=False, log_mlflow=False)
            finetune(params.finetune, progress=False, log_mlflow=False)
            metrics = evaluate(params.evaluate, params.finetune, log_mlflow=False)
            if out is not None:
                shutil.copytree(work / "reports", out / f"seed{seed}", dirs_exist_ok=True)
            return metrics
        finally:
            os.chdir(cwd)


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.4f}"


def report(runs: dict[int, dict]) -> list[str]:
    """Per fraction: every arm's test (and validation) top-1 as mean +- std over the seeds, the
    best SSL arm against the best baseline (tie when under two standard deviations), and the arm
    that shipped at each seed."""
    first = next(iter(runs.values()))
    lines = [f"frozen SSL features, {len(runs)} seeds: kNN {mean_std([r['knn_top1'] for r in runs.values()])}, "
             f"linear probe {mean_std([r['linear_top1'] for r in runs.values()])}"]
    for fraction in first["fractions"]:
        per_seed = [r["fractions"][fraction] for r in runs.values()]
        lines += ["", f"label fraction {fraction} ({per_seed[0]['num_labels']} labels, {per_seed[0]['num_val']} held out "
                      f"for validation), {len(runs)} seeds", f"  {'arm':<14}{'test top-1':>20}{'val top-1':>20}"]
        tests = {}
        for arm in per_seed[0]["arms"]:
            tests[arm] = [e["arms"][arm]["test_top1"] for e in per_seed]
            vals = [e["arms"][arm]["val_top1"] for e in per_seed]
            lines.append(f"  {arm:<14}{mean_std(tests[arm]):>20}{mean_std(vals):>20}")
        ssl = max((a for a in tests if a.startswith("ssl_")), key=lambda a: statistics.mean(tests[a]), default=None)
        base = max((a for a in tests if not a.startswith("ssl_")), key=lambda a: statistics.mean(tests[a]), default=None)
        if ssl and base and len(runs) > 1:
            diff = [s - b for s, b in zip(tests[ssl], tests[base])]
            d, sd = statistics.mean(diff), statistics.stdev(diff)
            verdict = "a tie (under 2 std)" if abs(d) < 2 * sd else ("SSL ahead" if d > 0 else "the baseline ahead")
            lines.append(f"  best SSL arm {ssl} - best baseline {base}: {d:+.4f} +- {sd:.4f} (per seed): {verdict}")
        lines.append(f"  shipped (validation-best) per seed: {', '.join(e['selected'] for e in per_seed)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."),
                        help="a project that has run through pretrain (through validate with --pretrain)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds (finetune.seed and tune.seed; pretrain.seed with --pretrain)")
    parser.add_argument("--pretrain", action="store_true",
                        help="each seed also pretrains its own encoder (pretrain.seed): the spread includes the encoder's")
    parser.add_argument("--out", type=Path, help="keep each seed's reports/ (tune, finetune, metrics) in OUT/seed<N>/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value, as sslpipe run --set")
    args = parser.parse_args()
    project = args.project.resolve()
    missing = [rel for rel in needs(args.pretrain) if not (project / rel).exists()]
    if missing:
        sys.exit(f"{project}: missing {', '.join(missing)}; run `make run` (or `sslpipe run`) there first")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print("\n".join(setup_lines(torch.device("cpu"))))
    encoder = "pretrained per seed" if args.pretrain else f"encoder {(project / ENCODER).stat().st_size} bytes"
    print(f"project:     {project} ({encoder})")
    print(f"overrides:   {' '.join(args.overrides) or '-'}; seeds {args.seeds} "
          f"({', '.join(o.split('=')[0] for o in seed_overrides(0, args.pretrain))})")
    runs, start = {}, time.perf_counter()
    for seed in args.seeds:
        t0 = time.perf_counter()
        runs[seed] = run_seed(project, seed, args.overrides, args.out, args.pretrain)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s; kNN {runs[seed]['knn_top1']:.4f}; shipped "
              f"{runs[seed]['selected_arm']} (test top-1 {runs[seed]['model_top1']:.4f})", flush=True)
    print("\n".join(report(runs)))
    print(f"\n{len(args.seeds)} seeds in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
