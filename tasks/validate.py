"""Stage 2 -- validate: pandera schemas over the metadata table and per-image statistics.

Writes ``reports/validation.json`` (every check, pass or fail, with example failing rows) and a
readable ``reports/validation.md``. The stages after it refuse to run unless it passed.

Beyond the schemas: the splits agree on the image shape; no test image has an exact or near copy
in the training pool (re-encoded, resized, a few pixels changed: ``tasks/duplicates.py``) past a
tolerance; duplicates inside the pool and degenerate (constant) images are counted, and fail past
their thresholds. A check that passed but found something is a warning, listed in the report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from ssl_models.data.shards import ShardReader
from tasks import duplicates, paths
from tasks.config import ValidateParams
from tasks.io import read_json, write_json, write_text


class ValidationFailed(RuntimeError):
    """The data failed one or more checks; the report names them."""


@dataclass
class CheckResult:
    name: str
    passed: bool
    failures: int = 0
    message: str = ""
    examples: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.passed, self.failures = bool(self.passed), int(self.failures)  # JSON-ready, not numpy


def metadata_schema(num_images: int, num_classes: int, shape: tuple[int, int, int]) -> pa.DataFrameSchema:
    """One row per image: unique id and array index, known split, label in [0, num_classes) or null,
    a content hash, and the image shape the array has."""
    c, h, w = shape
    return pa.DataFrameSchema(
        {
            "id": pa.Column(str, unique=True, nullable=False),
            "index": pa.Column("int64", [pa.Check.in_range(0, num_images - 1)], unique=True),
            "split": pa.Column(str, pa.Check.isin(["train", "test"])),
            "label": pa.Column("Int64", pa.Check.in_range(0, num_classes - 1), nullable=True),
            "sha1": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{40}$")),
            "channels": pa.Column("int64", pa.Check.eq(c)),
            "height": pa.Column("int64", pa.Check.eq(h)),
            "width": pa.Column("int64", pa.Check.eq(w)),
        },
        checks=[
            pa.Check(lambda df: ~((df["split"] == "test") & df["label"].isna()), name="test_images_labeled",
                     error="every test image needs a label"),
        ],
        strict=False,
        name="metadata",
    )


def image_stats_schema(max_value: float) -> pa.DataFrameSchema:
    """Per-image statistics: finite pixels in [0, max_value], not constant-NaN."""
    return pa.DataFrameSchema(
        {
            "id": pa.Column(str),
            "nonfinite": pa.Column(int, pa.Check.eq(0), description="NaN or inf pixels"),
            "min": pa.Column(float, pa.Check.ge(0.0)),
            "max": pa.Column(float, pa.Check.le(max_value)),
        },
        name="image_stats",
    )


def image_stats(images: np.ndarray, ids: pd.Series, chunk: int = 8192) -> pd.DataFrame:
    """min, max, mean, std and count of non-finite pixels per image, computed in chunks."""
    parts = []
    for start in range(0, len(images), chunk):
        x = np.asarray(images[start : start + chunk], dtype=np.float32).reshape(min(chunk, len(images) - start), -1)
        finite = np.isfinite(x)
        safe = np.where(finite, x, 0.0)
        parts.append(pd.DataFrame({
            "nonfinite": (~finite).sum(1).astype(int),
            "min": np.where(finite, x, np.inf).min(1).astype(float),
            "max": np.where(finite, x, -np.inf).max(1).astype(float),
            "mean": safe.mean(1).astype(float),
            "std": safe.std(1).astype(float),
        }))
    stats = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["nonfinite", "min", "max", "mean", "std"])
    stats.insert(0, "id", ids.to_numpy()[: len(stats)])
    return stats


def _schema_check(name: str, schema: pa.DataFrameSchema, df: pd.DataFrame, keep: list[str], max_examples: int) -> list[CheckResult]:
    try:
        schema.validate(df, lazy=True)
        return [CheckResult(name, True)]
    except pa.errors.SchemaErrors as err:
        results = []
        cases = err.failure_cases
        # a table-wide check reports every column of each failing row: keep one case per row
        table = (cases["schema_context"] == "DataFrameSchema") & cases["index"].notna()
        if table.any():
            rows = cases[table].drop_duplicates(["check", "index"])
            cases = pd.concat([cases[~table], rows.assign(column=None, failure_case=rows["check"])], ignore_index=True)
        for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
            where = "" if pd.isna(column) else f"{column}: "
            examples = []
            for _, case in group.head(max_examples).iterrows():
                row = {"failure": case["failure_case"]}
                if pd.notna(case["index"]) and case["index"] in df.index:
                    row.update(df.loc[case["index"], [c for c in keep if c in df.columns]].to_dict())
                examples.append(row)
            results.append(CheckResult(f"{name}.{column if pd.notna(column) else 'table'}", False, len(group),
                                       f"{where}{check}", examples))
        return results


def _rows(df: pd.DataFrame, mask: pd.Series, cols: list[str], max_examples: int) -> list[dict[str, Any]]:
    return df.loc[mask, cols].head(max_examples).to_dict("records")


def run_checks(directory: Path, cfg: ValidateParams) -> tuple[list[CheckResult], dict[str, Any]]:
    """All checks on the dataset in ``directory``; never raises for bad data, reports it."""
    results: list[CheckResult] = []
    info = read_json(directory / "info.json")
    meta = pd.read_parquet(directory / "metadata.parquet")
    images = ShardReader.open(directory / paths.SHARDS.relative_to(paths.DATASET_DIR))  # read in chunks
    classes = list(info["classes"])
    keep = ["id", "index", "split", "label", "source"]

    # array layout: (N, C, H, W) with one row of metadata per image
    shape_ok = images.ndim == 4 and images.shape[0] == len(meta)
    results.append(CheckResult(
        "images.shape", shape_ok, 0 if shape_ok else 1,
        "" if shape_ok else f"the image shards hold {images.shape}; expected (N={len(meta)}, C, H, W) "
                            "with one metadata row per image",
    ))
    dtype_ok = images.dtype in (np.uint8, np.float32, np.float64)
    results.append(CheckResult("images.dtype", dtype_ok, 0 if dtype_ok else 1,
                               "" if dtype_ok else f"the image shards hold {images.dtype}; expected uint8 (or float in [0, 1])"))
    if not shape_ok:
        return results, {"num_images": int(images.shape[0]) if images.ndim else 0}
    expected_shape = tuple(info.get("image_shape") or images.shape[1:])
    if tuple(images.shape[1:]) != expected_shape:
        results.append(CheckResult("images.image_shape", False, 1,
                                   f"images are {images.shape[1:]} but info.json says {expected_shape}"))

    results.append(_skipped_files(info))
    results += _schema_check("metadata", metadata_schema(len(images), len(classes), tuple(images.shape[1:])),
                             meta, keep, cfg.max_examples)
    results.append(_split_shapes(meta, cfg.max_examples))

    max_value = 255.0 if images.dtype == np.uint8 else 1.0
    stats = image_stats(images, meta["id"])
    stats_with_meta = stats.join(meta[["index", "split", "label", "source"]])
    results += _schema_check("pixels", image_stats_schema(max_value), stats_with_meta, keep + ["min", "max", "nonfinite"], cfg.max_examples)
    results.append(_degenerate(stats_with_meta, max_value, cfg))

    # no train/test leakage: identical content in both splits
    train_hashes = set(meta.loc[meta["split"] == "train", "sha1"])
    leak = (meta["split"] == "test") & meta["sha1"].isin(train_hashes)
    results.append(CheckResult("leakage.train_test", not leak.any(), int(leak.sum()),
                               "test images whose exact content is also in train" if leak.any() else "",
                               _rows(meta, leak, keep + ["sha1"], cfg.max_examples) if leak.any() else None))
    results += _near_duplicates(images, meta, cfg)

    # class balance of the labeled train images
    labeled = meta[(meta["split"] == "train") & meta["label"].notna()]
    counts = labeled["label"].value_counts().reindex(range(len(classes)), fill_value=0)
    share = counts / max(len(labeled), 1)
    low, high = (1 - cfg.class_balance_tolerance) / len(classes), (1 + cfg.class_balance_tolerance) / len(classes)
    bad = counts[(share < low) | (share > high) | (counts < cfg.min_images_per_class)]
    results.append(CheckResult(
        "labels.class_balance", bad.empty, len(bad),
        "" if bad.empty else f"class shares outside [{low:.3f}, {high:.3f}] or under {cfg.min_images_per_class} images",
        [{"label": int(k), "class": classes[int(k)], "count": int(v), "share": round(float(share[k]), 4)}
         for k, v in bad.head(cfg.max_examples).items()] or None,
    ))
    summary = {
        "num_images": len(meta),
        "num_train": int((meta["split"] == "train").sum()),
        "num_test": int((meta["split"] == "test").sum()),
        "num_labeled_train": len(labeled),
        "image_shape": list(images.shape[1:]),
        "dtype": str(images.dtype),
        "class_counts": {classes[i]: int(c) for i, c in counts.items() if i < len(classes)},
        "pixel_mean": float(stats["mean"].mean()) if len(stats) else None,
    }
    return results, summary


def _split_shapes(meta: pd.DataFrame, max_examples: int) -> CheckResult:
    """Every split's images have one and the same shape (metadata columns channels, height, width)."""
    cols = ["channels", "height", "width"]
    if not set(cols + ["split"]) <= set(meta.columns):
        return CheckResult("splits.shape", True)  # the metadata schema names the missing columns
    order = {"train": 0, "test": 1}
    splits = sorted(meta["split"].dropna().unique(), key=lambda s: (order.get(s, 2), str(s)))
    shapes = {s: sorted(set(zip(*(meta.loc[meta["split"] == s, c].tolist() for c in cols))), key=str) for s in splits}
    if len({s for found in shapes.values() for s in found}) <= 1:
        return CheckResult("splits.shape", True)
    parts = [f"{split} images are {' or '.join(str(s) for s in found)}" for split, found in shapes.items()]
    examples = _records(meta.drop_duplicates(["split"] + cols)[["id", "split"] + cols + (["source"] if "source" in meta else [])]
                        .head(max_examples))
    return CheckResult("splits.shape", False, len(parts), " but ".join(parts), examples)


def _skipped_files(info: dict[str, Any]) -> CheckResult:
    """The files ingest left out as undecodable (``ingest.on_bad_file: skip``): a warning listing
    every one of them, so that none goes missing unnoticed."""
    skipped = info.get("skipped") or []
    return CheckResult("sources.skipped", True, len(skipped),
                       f"{len(skipped)} undecodable image files left out by ingest (ingest.on_bad_file: skip); "
                       "all are listed below" if skipped else "", list(skipped) or None)


def _degenerate(stats: pd.DataFrame, max_value: float, cfg: ValidateParams) -> CheckResult:
    """Constant images (max == min), blank ones (all 0 or all ``max_value``) among them."""
    constant = stats["max"] == stats["min"]
    count, share = int(constant.sum()), float(constant.mean()) if len(stats) else 0.0
    if not count:
        return CheckResult("pixels.degenerate", True)
    rows = stats[constant].head(cfg.max_examples)
    value = rows["min"]
    kind = np.where(value == 0, "blank (all 0)", np.where(value == max_value, f"blank (all {max_value:g})", "constant"))
    examples = rows[[c for c in ["id", "index", "split", "label", "source"] if c in rows]].assign(value=value, kind=kind)
    blank = int((constant & stats["min"].isin([0.0, max_value])).sum())
    return CheckResult(
        "pixels.degenerate", share <= cfg.max_degenerate_fraction, count,
        f"{count} constant images ({share:.3%}; {blank} blank, all 0 or all {max_value:g}); "
        f"allowed: {cfg.max_degenerate_fraction:.3%}", _records(examples),
    )


def _near_duplicates(images: np.ndarray, meta: pd.DataFrame, cfg: ValidateParams) -> list[CheckResult]:
    """Test images with a near copy in the training pool, and train images repeating an earlier one."""
    sigs = duplicates.signatures(images)
    train = np.flatnonzero((meta["split"] == "train").to_numpy())
    test = np.flatnonzero((meta["split"] == "test").to_numpy())
    threshold = cfg.near_duplicate_similarity

    match, sim = duplicates.nearest(sigs[:, test], sigs[:, train], threshold)
    found = match >= 0
    count, share = int(found.sum()), float(found.mean()) if len(test) else 0.0
    leak = CheckResult(
        "leakage.near_duplicates", share <= cfg.max_near_duplicate_fraction, count,
        f"{count} test images ({share:.2%} of the test split) have a train image with similarity >= {threshold}; "
        f"allowed: {cfg.max_near_duplicate_fraction:.2%}" if count else "",
        _pairs(meta, test[found], train[match[found]], sim[found], ("test", "train"), cfg.max_examples) or None,
    )

    # inside the pool: exact copies (same hash) and near ones, each counted once per repeat
    sha1 = meta["sha1"].iloc[train].reset_index(drop=True)
    exact = sha1.duplicated().to_numpy()
    first_of = pd.Series(np.arange(len(sha1))).groupby(sha1.to_numpy()).transform("first").to_numpy()
    earlier, esim = duplicates.nearest_earlier(sigs[:, train], threshold)
    repeat = exact | (earlier >= 0)
    partner = np.where(exact, first_of, earlier)[repeat]
    count, share = int(repeat.sum()), float(repeat.mean()) if len(train) else 0.0
    pool = CheckResult(
        "duplicates.train", share <= cfg.max_train_duplicate_fraction, count,
        f"{count} train images ({share:.2%}) repeat an earlier train image ({int(exact.sum())} exact, "
        f"{count - int(exact.sum())} near: similarity >= {threshold}); allowed: {cfg.max_train_duplicate_fraction:.2%}"
        if count else "",
        _pairs(meta, train[repeat], train[partner], np.where(exact, 1.0, esim)[repeat], ("train", "earlier"),
               cfg.max_examples) or None,
    )
    return [leak, pool]


def _pairs(meta: pd.DataFrame, a: np.ndarray, b: np.ndarray, sim: np.ndarray, names: tuple[str, str],
           max_examples: int) -> list[dict[str, Any]]:
    """Example rows for matched pairs (row positions ``a`` and ``b``), most similar first: both ids,
    array indices, labels and sources, and their similarity."""
    cols = [c for c in ("id", "index", "label", "source") if c in meta]
    return [{**{f"{name}_{c}": _plain(meta[c].iloc[pos]) for name, pos in zip(names, (a[k], b[k])) for c in cols},
             "similarity": round(float(sim[k]), 5)}
            for k in np.argsort(-sim, kind="stable")[:max_examples]]


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts."""
    return [{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")]


def _plain(value: Any) -> Any:
    """A Python scalar for JSON: None for a missing value, ``int``/``float`` for numpy's."""
    return None if pd.isna(value) else value.item() if isinstance(value, np.generic) else value


def _markdown(results: list[CheckResult], summary: dict[str, Any], passed: bool) -> str:
    lines = [f"# Data validation: {'PASSED' if passed else 'FAILED'}", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items() if k != "class_counts"]
    lines += ["", "| check | result | failures | detail |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {_verdict(r)} | {r.failures} | {r.message} |")
    for r in results:
        if r.examples:
            lines += ["", f"## {r.name}: examples", "", "```"]
            lines += [str(e) for e in r.examples]
            lines += ["```"]
    return "\n".join(lines) + "\n"


def _verdict(r: CheckResult) -> str:
    return "FAIL" if not r.passed else "warn" if r.failures else "ok"


def validate(cfg: ValidateParams, directory: Path = paths.DATASET_DIR) -> dict[str, Any]:
    """Run every check, write the report, and raise ``ValidationFailed`` if any check failed.

    Returns:
        The report (``passed``, ``checks``, ``summary``, ``data_version``).
    """
    if not (directory / "info.json").exists():
        raise FileNotFoundError(f"{directory}: no dataset; run `sslpipe stage ingest` first")
    results, summary = run_checks(directory, cfg)
    passed = all(r.passed for r in results)
    report = {
        "passed": passed,
        "data_version": read_json(directory / "info.json")["version"],
        "summary": summary,
        "checks": [r.__dict__ for r in results],
        "warnings": [r.name for r in results if r.passed and r.failures],  # passed, but found something
    }
    write_json(paths.VALIDATION, report)
    write_text(paths.VALIDATION_SUMMARY, _markdown(results, summary, passed))
    if not passed:
        failed = [r for r in results if not r.passed]
        detail = "\n".join(f"  - {r.name}: {r.message} ({r.failures} failing)"
                           + (f"; e.g. {r.examples[0]}" if r.examples else "") for r in failed)
        raise ValidationFailed(f"data validation failed ({len(failed)} checks); see {paths.VALIDATION_SUMMARY}\n{detail}")
    return report
