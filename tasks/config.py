"""The pipeline's parameters: ``params.yaml`` -> typed, validated models, one per stage.

Every model forbids unknown keys, so a misspelt key is an error that names it and the file.
``--set section.key=value`` overrides are applied to the raw YAML before validation.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import re
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

log = logging.getLogger(__name__)


class ParamsError(ValueError):
    """Bad parameters: the message names the file and the key and says what is expected."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------- ingest
class ImageFolderParams(Section):
    train_dir: str | None = None  # root/<class>/*.png|jpg: labeled train images
    test_dir: str | None = None  # root/<class>/*.png|jpg: held-out test images
    unlabeled_dir: str | None = None  # any tree of images: added to the unlabeled train pool
    classes: list[str] | None = None  # label order; default: sorted folder names
    image_size: int = Field(32, ge=8, le=512)  # images are resized to this square side
    channels: Literal[1, 3] = 3
    test_fraction: float = Field(0.2, gt=0, lt=1)  # carved (stratified) from train_dir without test_dir


class IngestParams(Section):
    source: Literal["fashion_mnist", "image_folder"] = "fashion_mnist"
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
    download: bool = False  # download Fashion-MNIST with torchvision if files are missing (needs internet)
    image_folder: ImageFolderParams = ImageFolderParams()
    limit_train: int | None = Field(None, ge=10)  # keep a stratified sample of this many train images
    limit_test: int | None = Field(None, ge=10)
    seed: int = 0
    # image folders: undecodable files stop ingest, naming the file (stop), or are left out and
    # listed in the validation report (skip)
    on_bad_file: Literal["stop", "skip"] = "stop"
    workers: int | None = Field(None, ge=1)  # decoding processes; None: the CPU count
    # images are stored as shards of about this size: the unit of parallel decoding, of DVC's
    # per-file cache, and of what a reader holds at once (Fashion-MNIST: 10.7k images a shard)
    shard_mb: float = Field(8, gt=0)
    # a split up to this size is read into RAM at once (the fastest path: Fashion-MNIST's 60k
    # train images are 47 MB); a larger one is streamed from the shards a batch at a time
    in_memory_max_mb: float = Field(1024, ge=0)


# ------------------------------------------------------------------------------------- validate
class ValidateParams(Section):
    # each class's share of the labeled train images must be within (1 +- tolerance) / num_classes
    class_balance_tolerance: float = Field(0.5, ge=0)
    min_images_per_class: int = Field(1, ge=1)
    max_examples: int = Field(5, ge=1)  # failing rows shown per check
    # two images are near-duplicates when the cosine similarity of their 8x8 signatures (grayscale,
    # Gaussian-pooled, mean 0, norm 1; plain or despeckled: tasks/duplicates.py) reaches this. On
    # Fashion-MNIST 0.9995 catches every JPEG-90 re-encoding, 99 % of copies with 5 pixels changed,
    # 95 % of half-size-and-back (PIL's default bicubic) resizes, not 1-pixel shifts; it flags 51 of
    # the 10k test images, each beside a train image of its class that is the same product photo or
    # plain trousers no one could tell apart at 28 px. 0.999 flags 333, many distinct garments.
    near_duplicate_similarity: float = Field(0.9995, gt=0, le=1)
    # test images with a near copy in the training pool, as a share of the test split, before the
    # check fails (they are always reported with examples). Fashion-MNIST has its own 0.51 %: a leak
    # of 1 % can move a test accuracy by at most 1 point.
    max_near_duplicate_fraction: float = Field(0.01, ge=0, le=1)
    # train images repeating an earlier train image (exact or near); more fails. Fashion-MNIST: 0.27 %
    max_train_duplicate_fraction: float = Field(0.05, ge=0, le=1)
    # constant images (max == min, blank ones included); a larger share fails. Fashion-MNIST: none
    max_degenerate_fraction: float = Field(0.001, ge=0, le=1)


# ------------------------------------------------------------------------------------- pretrain
# the names ``ssl_models.methods.METHODS`` registers (a test keeps the two equal), spelt out here
# so that the flow's ``method`` parameter is a drop-down in the Prefect UI without importing torch
MethodName = Literal["simclr", "moco", "byol", "simsiam", "dino", "barlowtwins", "vicreg", "swav", "deepcluster",
                     "mae", "dae", "inpainting", "rotation", "jigsaw"]
BackboneName = Literal["small_cnn", "resnet18", "vit_tiny"]  # ``ssl_models.backbones.BACKBONES`` (a test keeps them equal)


def _checks_methods(info: ValidationInfo) -> bool:
    """Whether this validation checks against the SSL methods' registry (``ssl_models.methods``,
    which imports torch); ``load_params`` first validates without, so a params error answers fast."""
    return (info.context or {}).get("methods", True)


class AugmentParams(Section):
    """Overrides of the method's own views (``ssl_models.augment.ViewAugment`` arguments); a key
    left unset (null) keeps the method's default: SimCLR's views for most methods, crop and flip
    only for mae, dae and inpainting."""

    crop_scale: tuple[float, float] | None = None  # SimCLR: (0.2, 1.0) here (0.08 in the paper, for 224 px)
    flip_p: float | None = Field(None, ge=0, le=1)  # 0.5
    jitter_strength: float | None = Field(None, ge=0)  # 0.5
    jitter_p: float | None = Field(None, ge=0, le=1)  # 0.8
    grayscale_p: float | None = Field(None, ge=0, le=1)  # 0.2
    blur_p: float | None = Field(None, ge=0, le=1)  # 0.0
    solarize_p: float | None = Field(None, ge=0, le=1)  # 0.0

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class DistributedParams(Section):
    """Training on several workers (Ray Train's ``TorchTrainer``, DDP: gloo on CPUs, NCCL on
    GPUs), on a local Ray instance or the cluster at ``RAY_ADDRESS``: ``pretrain.distributed`` and
    ``finetune.distributed``. One worker is today's single process, no Ray; the section's
    ``batch_size`` stays the global batch, split evenly over the workers."""

    workers: int = Field(1, ge=1)
    use_gpu: bool = False  # one GPU per worker (NCCL)
    resources_per_worker: dict[str, float] = {"CPU": 1}  # Ray resources; CPU is also the worker's torch threads
    # where checkpoints go: a directory or URI (s3://...) every worker can reach; None: .sslpipe/ray
    storage_path: str | None = None
    max_failures: int = Field(2, ge=0)  # worker-group restarts from the last checkpoint before the stage fails


class FinetuneDistributedParams(DistributedParams):
    """``finetune.distributed``: as ``pretrain.distributed``, for the fractions large enough to need it."""

    # a fraction trains on the workers only with at least this many training labels: starting a
    # worker group costs seconds, more than a small fraction's whole training
    min_labels: int = Field(10000, ge=0)


def _check_batch_splits(batch_size: int, workers: int) -> None:
    """The global batch must split evenly over the Ray Train workers (batch_size / workers each)."""
    if batch_size % workers:
        raise ValueError(f"batch_size {batch_size} does not split over {workers} workers (the global "
                         f"batch, batch_size / workers each): make batch_size a multiple of distributed.workers")


class PretrainParams(Section):
    method: MethodName = "simclr"
    # per method, its keyword arguments ({simclr: {temperature: 0.2}}); only ``method``'s entry is
    # used, so switching methods is one key; unset arguments keep the paper defaults
    method_args: dict[str, Any] = {"simclr": {"temperature": 0.2}, "mae": {"mask_ratio": 0.75}}
    backbone: BackboneName = "small_cnn"  # small_cnn (CPU), resnet18 (GPU), vit_tiny (mae)
    width: int = Field(32, ge=4)  # small_cnn first-stage channels
    # small_cnn's first convolution at stride 2: no full-resolution layer, a 1.3x faster step and
    # the same figures in the default run (README, Results); 1: the original (``SmallCNN``)
    stem_stride: Literal[1, 2] = 2
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(256, ge=2)
    # None: the method's own (``SSLMethod.optim``), filled in by validation
    optimizer: Literal["sgd", "adamw", "lars"] | None = None
    lr: float | None = Field(None, gt=0)  # for batch 256, scaled linearly
    weight_decay: float | None = Field(None, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    grad_clip: float | None = None
    images_per_epoch: int | None = Field(None, ge=2)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    channels_last: bool | None = None
    compile: bool = False  # ~40 s to compile on a machine's first run; steps ~1.45x faster in fp32, a tie in bf16
    device: str = "auto"
    checkpoint_every: int = Field(100, ge=1)
    knn_monitor_images: int = Field(5000, ge=0)  # per-epoch online kNN on this many train/test images (0: off)
    augment: AugmentParams = AugmentParams()
    distributed: DistributedParams = DistributedParams()
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        """Unset optimizer, lr, weight_decay: the method's own (``SSLMethod.optim``). A method that
        needs a particular backbone (mae) takes it when the backbone is at its default and no
        ``--set pretrain.backbone`` chose it; the mismatch check below catches the rest."""
        if not isinstance(data, dict) or not _checks_methods(info):
            return data
        from ssl_models.methods import METHODS

        name = data.get("method", cls.model_fields["method"].default)
        method = METHODS.get(name) if isinstance(name, str) else None
        if method is None:  # field validation names it
            return data
        data = {**data, **{k: v for k, v in method.optim.items() if data.get(k) is None}}
        default = cls.model_fields["backbone"].default
        chosen = "pretrain.backbone" in (info.context or {}).get("set", ())
        if method.backbones and default not in method.backbones and data.get("backbone", default) == default \
                and not chosen:
            data["backbone"] = method.backbones[0]
            log.info("pretrain: %s trains a %s backbone, so pretrain.backbone %s (its default) became %s",
                     method.name, " or ".join(method.backbones), default, method.backbones[0])
        return data

    @model_validator(mode="after")
    def _batch_splits(self) -> "PretrainParams":
        _check_batch_splits(self.batch_size, self.distributed.workers)
        return self

    @model_validator(mode="after")
    def _method_fits(self, info: ValidationInfo) -> "PretrainParams":
        if not _checks_methods(info):
            return self
        from ssl_models.methods import METHODS

        backbones = METHODS[self.method].backbones
        if backbones and self.backbone not in backbones:
            raise ValueError(f"{self.method} needs backbone {' or '.join(backbones)} (got {self.backbone}): "
                             f"set pretrain.backbone={backbones[0]}")
        for name, kwargs in self.method_args.items():
            if name not in METHODS:
                raise ValueError(f"method_args.{name}: not a method; the keys of method_args are method names "
                                 f"({', '.join(sorted(METHODS))}), each holding that method's arguments")
            if not isinstance(kwargs, dict):
                raise ValueError(f"method_args.{name}: expected a mapping of {name}'s arguments, got {kwargs!r}")
            accepted = set(inspect.signature(METHODS[name].__init__).parameters) - {"self", "encoder", "augment"}
            unknown = sorted(set(kwargs) - accepted)
            if unknown:
                raise ValueError(f"method_args.{name}: {unknown} are not arguments of {name}; "
                                 f"it takes {', '.join(sorted(accepted))}")
        return self

    @property
    def args(self) -> dict[str, Any]:
        """The chosen method's arguments."""
        return self.method_args.get(self.method, {})


# ----------------------------------------------------------------------------------------- tune
# the fine-tuning arms (tasks/arms.py): ssl_* start from the SSL encoder, the others from scratch
ArmName = Literal["ssl_finetune", "ssl_fixmatch", "ssl_distill", "supervised", "fixmatch"]


class ArmSpace(Section):
    """What tune searches for one arm (log-uniform ranges; choices)."""

    lr: tuple[float, float]  # the head's peak AdamW learning rate
    weight_decay: tuple[float, float] = (1e-5, 1e-2)
    # the encoder's lr over the head's: < 1 keeps pretrained features from being distorted by a
    # fresh head's large gradients (Kumar et al., 2022); from scratch there is nothing to protect
    encoder_lr_scale: list[float] = [1.0]


_PRETRAINED_SPACE = ArmSpace(lr=(1e-3, 1e-2), encoder_lr_scale=[0.1, 0.3])
_SCRATCH_SPACE = ArmSpace(lr=(1e-3, 1e-2))


class TuneParams(Section):
    label_fraction: float = Field(0.1, gt=0, le=1)  # the labeled subset searched on
    val_fraction: float = Field(0.2, gt=0, lt=1)  # of those labels, held out to score trials
    num_samples: int = Field(4, ge=1)  # trials per arm, the same for every arm
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    epochs: list[int] = [4, 8]  # every arm draws its epochs from these: the same budget
    search_space: dict[ArmName, ArmSpace] = {
        "ssl_finetune": _PRETRAINED_SPACE, "ssl_fixmatch": _PRETRAINED_SPACE, "ssl_distill": _PRETRAINED_SPACE,
        "supervised": _SCRATCH_SPACE, "fixmatch": _SCRATCH_SPACE,
    }
    batch_size: int = Field(128, ge=2)
    seed: int = 0  # seeds the search (every trial's config) and every trial's training
    # where Tune keeps its experiment state (Tune's RunConfig.storage_path): null is .sslpipe/ray in
    # the project, on the driver's machine -- enough on a cluster too, since trials save no
    # checkpoints and Ray writes results from the driver; a shared dir or URI (s3://...) otherwise
    storage_path: str | None = None
    # custom resources every trial also asks for, to place trials on labeled nodes
    # (`ray start --resources '{"node2": 1}'` -> {node2: 1}); CPUs and GPUs: *_per_trial
    resources_per_trial: dict[str, float] = {}

    @field_validator("resources_per_trial")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for key, amount in v.items():
            if key.lower() in ("cpu", "gpu"):
                raise ValueError(f"resources_per_trial.{key}: set tune.{key.lower()}s_per_trial instead; "
                                 f"resources_per_trial holds custom resources (node labels)")
            if amount < 0:
                raise ValueError(f"resources_per_trial.{key}: {amount} is negative")
        return v


# ------------------------------------------------------------------------------------- finetune
class FixMatchParams(Section):
    """FixMatch (Sohn et al., 2020): paper values except ``mu``."""

    mu: int = Field(2, ge=1)  # unlabeled images per labeled one in a step (paper: 7; a step costs ~1 + 2 mu)
    threshold: float = Field(0.95, ge=0, le=1)  # confidence a pseudo-label needs
    lambda_u: float = Field(1.0, ge=0)  # weight of the unlabeled loss


class DistillParams(Section):
    """Self-distillation (SimCLRv2, Chen et al., 2020): the ssl_finetune model labels the pool softly."""

    mu: int = Field(2, ge=1)  # unlabeled images per labeled one in a step
    temperature: float = Field(0.1, gt=0)  # SimCLRv2's for self-distillation
    labeled_weight: float = Field(0.0, ge=0)  # labeled cross-entropy added (SimCLRv2: unlabeled only)


class FinetuneParams(Section):
    # the best SSL arm and both baselines; ssl_fixmatch and ssl_distill tie with ssl_finetune over
    # 3 seeds (README, Results) at 2-3x its cost, so they are opt-in
    arms: list[ArmName] = ["ssl_finetune", "supervised", "fixmatch"]
    label_fractions: list[float] = [0.01, 0.1]  # 1.0 is allowed: the ceiling
    val_fraction: float = Field(0.2, gt=0, lt=1)  # of each fraction's labels, held out to choose the arm
    batch_size: int = Field(128, ge=2)
    min_steps: int = Field(200, ge=1)  # the same for every arm: tiny label sets still get trained
    fixmatch: FixMatchParams = FixMatchParams()
    distill: DistillParams = DistillParams()
    # the supervised and ssl_finetune arms on Ray Train workers at the fractions with at least
    # ``min_labels`` training labels (fixmatch, ssl_fixmatch and ssl_distill stay in one process)
    distributed: FinetuneDistributedParams = FinetuneDistributedParams()
    seed: int = 0

    @model_validator(mode="after")
    def _batch_splits(self) -> "FinetuneParams":
        _check_batch_splits(self.batch_size, self.distributed.workers)
        return self

    @field_validator("label_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError("label_fractions must be a non-empty list of numbers in (0, 1]")
        return sorted(set(v))

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("arms: name at least one arm")
        if "ssl_distill" in v and "ssl_finetune" not in v:
            raise ValueError("arms: ssl_distill learns from the ssl_finetune model; add ssl_finetune")
        order = list(get_args(ArmName))  # teachers before their students
        return sorted(set(v), key=order.index)


# ------------------------------------------------------------------------------------- evaluate
class EvaluateParams(Section):
    knn_k: int = Field(20, ge=1)
    knn_temperature: float = Field(0.07, gt=0)
    linear_l2: float = Field(1e-4, ge=0)
    embedding_plot_images: int = Field(2000, ge=0)


# ------------------------------------------------------------------------------------- register
class RegisterParams(Section):
    model_name: str = "sslpipe-classifier"
    metric: str = "model_top1"  # a key of reports/metrics.json, logged with the version
    # test top-1 margin over the champion (both scored on the same test images) to take `champion`
    min_improvement: float = Field(0.0, ge=0)


# -------------------------------------------------------------------------------------- retrain
class RetrainParams(Section):
    """The retrain flow (flows/retrain.py) and its deployment; no DVC stage reads this section."""

    cron: str = "0 3 * * 1"  # the retrain deployment's schedule: Mondays 03:00 (editable in the Prefect UI)
    timezone: str = "UTC"
    # MMD^2 (RBF kernel, median bandwidth) between the champion's encoder features of its training
    # images and of the new ones; same-distribution samples score ~0, a changed distribution > 0.05
    drift_threshold: float = Field(0.05, ge=0)
    drift_images: int = Field(500, ge=10)  # images sampled from each side for the drift score
    lock_timeout_s: float = Field(3600, gt=0)  # how long a second trigger waits for a running retrain

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"cron {v!r}: expected 5 fields (minute hour day month weekday), e.g. '0 3 * * 1'")
        return v


class Params(Section):
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    pretrain: PretrainParams = Field(default_factory=PretrainParams)  # built when needed: it imports the methods
    tune: TuneParams = TuneParams()
    finetune: FinetuneParams = FinetuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    retrain: RetrainParams = RetrainParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


STAGES = ("sources", "ingest", "validate", "pretrain", "tune", "finetune", "evaluate", "register")
DATA_STAGES = STAGES[:3]  # read no pretrain value: they load params without the methods (torch)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"--set {text!r}: expected section.key=value, e.g. pretrain.epochs=3")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(doc: MutableMapping[str, Any], overrides: Sequence[str]) -> MutableMapping[str, Any]:
    """Set each ``section.key=value`` in ``doc`` in place (a dict, or ruamel's commented map when
    params.yaml is rewritten); a missing or null section becomes a mapping. Unknown keys are left
    for validation to name."""
    for text in overrides:
        path, value = parse_override(text)
        node = doc
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, MutableMapping):
                raise ParamsError(f"--set {text!r}: {part} is not a section (it holds a value)")
        node[path[-1]] = value
    return doc


def known_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """Every key a params file can spell, dotted: ``pretrain``, ``pretrain.augment.flip_p``, ..."""
    out = []
    for name, field in (model or Params).model_fields.items():
        key = prefix + (field.alias or name)
        out.append(key)
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            out += known_keys(kind, f"{key}.")
        elif get_origin(kind) is dict and get_origin(get_args(kind)[0]) is Literal:  # tune.search_space.<arm>
            for item in get_args(get_args(kind)[0]):
                out += [f"{key}.{item}", *known_keys(get_args(kind)[1], f"{key}.{item}.")]
    return out


def suggest(key: str) -> list[str]:
    """Known keys a misspelt or misplaced ``key`` may mean: a close name in its own section, else
    the same or a close name in any section (``epochs`` -> pretrain.epochs, tune.epochs)."""
    parent, _, name = key.rpartition(".")

    def likeness(k: str) -> float:
        return difflib.SequenceMatcher(None, name, k.rpartition(".")[2]).ratio()

    near = sorted((k for k in known_keys() if likeness(k) >= 0.8), key=lambda k: -likeness(k))
    return ([k for k in near if k.rpartition(".")[0] == parent] or near)[:3]


def _format_error(e: ValidationError, source: str, overrides: Sequence[str]) -> str:
    """One line per bad key; a key that came from ``--set`` is blamed on ``--set``, not the file."""
    set_keys = {text.partition("=")[0].strip() for text in overrides}
    lines, from_file = [], False
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]).replace("validate_", "validate").replace("register_", "register")
        from_set = any(k == key or k.startswith(f"{key}.") for k in set_keys)
        from_file |= not from_set
        where = f"--set {key}" if from_set else f"{source}: {key}"
        if err["type"] == "extra_forbidden":
            hint = f"did you mean {' or '.join(found)}?" if (found := suggest(key)) else "see params.yaml for the known keys"
            lines.append(f"  - {where}: unknown key; {hint}")
        elif err["type"] == "literal_error":  # a closed set of names: list them
            names = ", ".join(re.findall(r"'([^']*)'", err["ctx"]["expected"]))
            lines.append(f"  - {where}: unknown {err['loc'][-1]} {err['input']!r}; choose one of {names}")
        elif err["type"] == "value_error":
            lines.append(f"  - {where}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  - {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join([f"invalid parameters ({source})" if from_file else "invalid --set", *lines])


def read_raw(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root, or pass --params FILE)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_params(path: str | Path = "params.yaml", overrides: Sequence[str] = (), methods: bool = True) -> Params:
    """Read a params file, apply ``section.key=value`` overrides and validate.

    Args:
        methods: also check ``pretrain`` against the SSL methods' registry and fill in the chosen
            method's optimizer defaults (imports torch, ~1.5 s). A caller that reads no
            ``pretrain`` value and hashes no whole params (the data stages, a model's name) can
            skip it: every key, type and range is validated either way.

    Raises:
        ParamsError: naming the file (or ``--set``) and each bad key.
    """
    raw = apply_overrides(read_raw(path), overrides)
    set_keys = [text.partition("=")[0].strip() for text in overrides]
    try:
        # keys, types and ranges first: their errors answer without importing the methods (torch)
        params = Params.model_validate(raw, context={"methods": False})
        return Params.model_validate(raw, context={"set": set_keys}) if methods else params
    except ValidationError as e:
        raise ParamsError(_format_error(e, str(path), overrides)) from None
