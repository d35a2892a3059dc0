"""The typed run config: one frozen dataclass per section, read from YAML/JSON plus ``--section.key=value``.

Everything a run does is in this object and it is written into the run folder (``config.json``), so a run
can be repeated or resumed from its folder alone. Unknown sections or keys are errors, never ignored: a
misspelt ``--optim.warmpu=500`` that silently trains with the default is the bug this module exists for.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import HF_TEXT_POOLINGS, HF_TEXT_PROJECTIONS

__all__ = [
    "ModelSection",
    "DataSection",
    "OptimSection",
    "RunSection",
    "EvalSection",
    "DistSection",
    "TrainConfig",
    "load_config",
    "parse_overrides",
]


@dataclass(frozen=True)
class ModelSection:
    """The model: a preset, optional shape overrides, optional starting weights, locking (LiT)."""

    preset: str = "cpu-vit-32"
    pretrained: str | None = None  # any checkpoint torchclip.load() reads (incl. our training checkpoints)
    lock_image: bool = False  # LiT: freeze the image tower (and keep it in eval mode)
    lock_text: bool = False
    # With lock_text: this many of the text encoder's last layers still train (0: all locked). The
    # projection into the shared space of a pretrained-LM text tower always trains.
    lock_text_unlocked_layers: int = 0
    # A pretrained language model as the text tower (LiT): a transformers folder or hub repo; its own
    # tokenizer replaces data.vocab. Pooled (cls | mean | eot) and projected (linear | mlp | none: its own space).
    text_tower: str | None = None
    text_pooling: str = "mean"
    text_proj: str = "linear"
    grad_checkpointing: bool = False
    activation: str | None = None
    embed_dim: int | None = None
    image_size: int | None = None
    patch_size: int | None = None
    vision_width: int | None = None
    patch_dropout: float | None = None  # ViT only: share of patches dropped per image while training (FLIP)
    vision_layers: int | None = None
    text_width: int | None = None
    text_heads: int | None = None
    text_layers: int | None = None
    context_length: int | None = None
    init_logit_scale: float | None = None  # None: ln(1/0.07) for optim.loss=clip, ln(10) for siglip
    init_logit_bias: float | None = None  # optim.loss=siglip only; None: -10 (SigLIP's start)


@dataclass(frozen=True)
class DataSection:
    """Training data, augmentation and the tokenizer. ``batch_size`` is per rank and per micro-batch."""

    train: str = ""  # shards ('a-{000..009}.tar::b.tar') or a .csv/.tsv
    batch_size: int = 128
    num_workers: int = 2
    shuffle_buffer: int = 1000
    resampled: bool = False
    skip_bad_shards: bool = False  # count an unreadable shard and go on, instead of stopping with its error
    num_samples: int | None = None  # dataset size, to turn optim.epochs into steps
    caption_key: str = "txt"  # 'txt' member, or a .json field name
    csv_image_key: str = "filepath"
    csv_caption_key: str = "title"
    vocab: str = "openai"  # 'openai' | path to a merges file / HF dir | 'bpe:N' (train N tokens on the captions)
    bpe_samples: int = 200_000  # captions read to train a 'bpe:N' vocabulary
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)
    hflip: float = 0.0
    color_jitter: float = 0.0  # strength of a SimCLR-style colour jitter, applied to 80% of the images
    grayscale: float = 0.0  # probability of turning an image gray
    flatten: float = 0.0  # probability of cutting an image to a few flat colours
    outline: float = 0.0  # probability of drawing an image's edges as dark lines
    random_conv: float = 0.0  # probability of mixing an image with a random convolution of itself (RandConv)
    zoom_out: float = 0.0  # probability of drawing the picture smaller on its own background colour
    zoom_out_scale: tuple[float, float] = (0.6, 1.0)  # side factor of the smaller picture
    trim_margin: bool = False  # crop artwork to its content before augmenting (eval.trim_margin for eval sets)
    tag_dropout: float = 0.0
    name_dropout: float = 0.0  # drop the first tag (the name) too, when other tags remain
    shuffle_tags: bool = False
    templates: tuple[str, ...] = ()
    template_prob: float = 0.0


@dataclass(frozen=True)
class OptimSection:
    """AdamW + warmup/cosine. ``steps`` counts optimizer steps; ``epochs`` (with data.num_samples) overrides it."""

    lr: float = 5e-4
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float | None = None  # None: 0.98 for ViT, 0.999 for ResNet (paper)
    eps: float | None = None  # None: 1e-6 for ViT, 1e-8 for ResNet
    warmup: int = 100
    steps: int = 1000
    epochs: float | None = None
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    accum_steps: int = 1  # micro-batches per step; exact for the contrastive loss (features cached)
    max_logit_scale: float = math.log(100)
    ema: float = 0.0  # decay of an exponential moving average of the weights, which eval and the saved model use; 0: off
    soft_targets: float = 0.0  # temperature of targets from the captions' own similarity (clip_loss); 0: one-hot
    loss: str = "clip"  # clip: the softmax loss (paper); siglip: the sigmoid loss, with a learned logit bias


@dataclass(frozen=True)
class RunSection:
    """Where, how precise, how often to log/save, and what to do about a non-finite loss."""

    output_dir: str = "runs/train"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 ; auto = bf16 where it is fast, else fp32
    threads: int | None = None  # torch intra-op threads on CPU; None keeps torch's default
    save_every: int = 500  # steps; a checkpoint is always written at the end
    keep_checkpoints: int = 2
    log_every: int = 10
    nonfinite: str = "skip"  # skip | stop
    max_nonfinite: int = 20  # consecutive skipped steps before stopping anyway
    tensorboard: bool = True
    progress: bool = True


@dataclass(frozen=True)
class EvalSection:
    """Zero-shot evaluation during training. ``sets``: ``name=spec`` entries (shards or CSV)."""

    sets: tuple[str, ...] = ()
    every: int = 0  # steps; 0: only at the end
    label_keys: tuple[str, ...] = ("name",)  # .json fields used as class labels ('caption' works too)
    templates: tuple[str, ...] = ("a photo of a {}.",)
    exclude: tuple[str, ...] = ()  # label values left out (e.g. 'Component')
    batch_size: int = 256
    class_prompts: tuple[str, ...] = ()  # 'key=prompts.json': that key's classes by their own prompts (CuPL's layout)
    trim_margin: bool = False  # crop each eval image to its content first (torchclip.transforms.trim_margin)
    hubness: tuple[str, ...] = ()  # 'key=shards': that key's scores hubness-corrected against these (training) images
    hubness_k: int = 10  # nearest bank images per class (torchclip.evaluation.hubness_penalty)


@dataclass(frozen=True)
class DistSection:
    """torchrun: DDP by default, FSDP2 (``fully_shard``) for models that do not fit one device."""

    strategy: str = "ddp"  # ddp | fsdp
    backend: str = "auto"  # auto (nccl on GPUs, gloo on CPU) | nccl | gloo
    timeout_s: int = 1800


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    eval: EvalSection = field(default_factory=EvalSection)
    dist: DistSection = field(default_factory=DistSection)

    def __post_init__(self) -> None:
        choices = {("run", "precision"): ("auto", "fp32", "bf16", "fp16"), ("run", "nonfinite"): ("skip", "stop", True),
                   ("run", "device"): ("auto", "cpu", "cuda", True), ("dist", "strategy"): ("ddp", "fsdp", True),
                   ("dist", "backend"): ("auto", "nccl", "gloo")}
        for (sec, key), allowed in choices.items():
            v = getattr(getattr(self, sec), key)
            if v not in allowed:
                raise ValueError(f"{sec}.{key}={v!r}: expected one of {allowed}")
        for s in self.eval.sets:
            if "=" not in s:
                raise ValueError(f"eval.sets entry {s!r} must be name=spec")
        for name, what in (("class_prompts", "file.json"), ("hubness", "shards")):
            entries = getattr(self.eval, name)
            keys = []
            for s in entries:
                key, sep, value = s.partition("=")
                if not sep or not value:
                    raise ValueError(f"eval.{name} entry {s!r} must be key={what}")
                keys.append(key)
                if key not in self.eval.label_keys:
                    raise ValueError(f"eval.{name} entry {s!r}: {key!r} is not one of eval.label_keys "
                                     f"{list(self.eval.label_keys)}")
            if len(set(keys)) != len(keys):
                raise ValueError(f"eval.{name} names a label key twice: {list(entries)}")
        _check_values(self)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = set(d) - set(sections)
        if unknown:
            raise ValueError(f"unknown config sections {sorted(unknown)}; known: {sorted(sections)}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _build(hints[name], d.get(name) or {}, name) for name in sections})

    def total_steps(self, world_size: int = 1) -> int:
        """Optimizer steps: ``optim.steps``, or ``epochs * num_samples / global batch`` when epochs is set."""
        if self.optim.epochs is None:
            return self.optim.steps
        if not self.data.num_samples:
            raise ValueError("optim.epochs needs data.num_samples")
        global_batch = self.data.batch_size * self.optim.accum_steps * world_size
        return max(1, math.ceil(self.optim.epochs * self.data.num_samples / global_batch))


# (low, high, low allowed, high allowed) -> the "section.key"s it bounds. Values a run cannot work with are
# refused when the config is read, not hours later (or never: a NaN learning rate trains on silently).
_BOUNDS: dict[tuple[float, float, bool, bool], str] = {
    (0, math.inf, False, True): "optim.lr optim.eps optim.epochs optim.max_logit_scale",
    (0, math.inf, True, True): "optim.weight_decay optim.warmup optim.grad_clip optim.soft_targets data.num_workers "
                               "run.keep_checkpoints run.max_nonfinite eval.every model.lock_text_unlocked_layers",
    (1, math.inf, True, True): "optim.steps optim.accum_steps data.batch_size data.shuffle_buffer "
                               "data.num_samples data.bpe_samples model.embed_dim model.image_size "
                               "model.patch_size model.vision_width model.vision_layers model.text_width "
                               "model.text_heads model.text_layers run.threads run.save_every run.log_every "
                               "eval.batch_size eval.hubness_k dist.timeout_s",
    (2, math.inf, True, True): "model.context_length",
    (0, 1, True, False): "optim.beta1 optim.beta2 optim.ema",
    (0, 1, True, True): "data.hflip data.tag_dropout data.name_dropout data.template_prob "
                        "data.color_jitter data.grayscale data.flatten data.outline data.random_conv data.zoom_out "
                        "model.patch_dropout",
}
# (section, key) -> its bounds
_RANGES: dict[tuple[str, str], tuple[float, float, bool, bool]] = {
    (section, name): bound
    for bound, keys in _BOUNDS.items() for section, name in (key.split(".") for key in keys.split())
}


def _check_values(cfg: TrainConfig) -> None:
    """Every number finite and in its range, the preset known, the vocabulary spelled right."""
    from ..config import get_preset

    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            v = getattr(values, f.name)
            numbers = v if isinstance(v, tuple) else (v,)
            for x in numbers:
                if isinstance(x, float) and not math.isfinite(x):
                    raise ValueError(f"{section.name}.{f.name}={x}: must be a finite number")
            if v is None or (section.name, f.name) not in _RANGES:
                continue
            low, high, low_ok, high_ok = _RANGES[section.name, f.name]
            if not ((low <= v if low_ok else low < v) and (v <= high if high_ok else v < high)):
                bound = f"{'>=' if low_ok else '>'} {low:g}"
                if high < math.inf:
                    bound += f" and {'<=' if high_ok else '<'} {high:g}"
                raise ValueError(f"{section.name}.{f.name}={v}: must be {bound}")
    try:
        get_preset(cfg.model.preset)
    except KeyError as e:
        raise ValueError(f"model.preset={cfg.model.preset!r}: {e.args[0]}") from None
    lo, hi = cfg.data.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"data.crop_scale={list(cfg.data.crop_scale)}: expected 0 < low <= high <= 1")
    lo, hi = cfg.data.zoom_out_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"data.zoom_out_scale={list(cfg.data.zoom_out_scale)}: expected 0 < low <= high <= 1")
    lo, hi = cfg.data.crop_ratio
    if not 0 < lo <= hi:
        raise ValueError(f"data.crop_ratio={list(cfg.data.crop_ratio)}: expected 0 < low <= high")
    m = cfg.model
    if m.text_pooling not in HF_TEXT_POOLINGS or m.text_proj not in HF_TEXT_PROJECTIONS:
        raise ValueError(f"model.text_pooling={m.text_pooling!r} / model.text_proj={m.text_proj!r}: pooling is "
                         "cls, mean or eot; the projection linear, mlp or none")
    if m.text_tower and cfg.data.vocab != "openai":
        raise ValueError(f"data.vocab={cfg.data.vocab!r} with model.text_tower: a pretrained text tower brings its "
                         "own tokenizer (leave data.vocab unset)")
    if m.text_tower and m.pretrained:
        raise ValueError("model.text_tower builds a new model; model.pretrained loads one: give one of them")
    if cfg.optim.ema and cfg.dist.strategy == "fsdp":
        raise ValueError("optim.ema keeps a full copy of the weights, which dist.strategy=fsdp shards: use ddp")
    if cfg.optim.loss not in ("clip", "siglip"):
        raise ValueError(f"optim.loss={cfg.optim.loss!r}: clip (softmax) or siglip (sigmoid)")
    if cfg.optim.loss != "siglip" and m.init_logit_bias is not None:
        raise ValueError("model.init_logit_bias is the sigmoid loss's: set optim.loss=siglip")
    if cfg.optim.loss == "siglip" and cfg.optim.soft_targets:
        raise ValueError("optim.soft_targets shapes the softmax loss's targets: it needs optim.loss=clip")
    if m.lock_text_unlocked_layers and not m.lock_text:
        raise ValueError("model.lock_text_unlocked_layers needs model.lock_text")
    vocab = cfg.data.vocab
    if vocab.startswith("bpe:") and not (vocab[4:].isdigit() and int(vocab[4:]) > 0):
        raise ValueError(f"data.vocab={vocab!r}: 'bpe:N' needs a vocabulary size N, e.g. 'bpe:8000'")
    for key, templates in (("data.templates", cfg.data.templates), ("eval.templates", cfg.eval.templates)):
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise ValueError(f"{key}: every template needs a '{{}}' for the name, got {bad}")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"section {where!r} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown keys in [{where}]: {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{k: _coerce(hints[k], v, f"{where}.{k}") for k, v in values.items()})


def _coerce(tp: Any, v: Any, where: str) -> Any:
    """Check/convert ``v`` to the annotated type: ints are floats, lists are tuples, 'none' is None."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None or (isinstance(v, str) and v.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        if isinstance(v, str):
            v = [s for s in v.split(",") if s] if v else []
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {v!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], x, where) for x in v)
        if len(v) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {v!r}")
        return tuple(_coerce(a, x, where) for a, x in zip(args, v))
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
            return v.lower() in ("true", "1", "yes")
        raise ValueError(f"{where}: expected a bool, got {v!r}")
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError(f"{where}: expected an int, got {v!r}")
        try:
            return int(v)
        except ValueError as e:
            raise ValueError(f"{where}: expected an int, got {v!r}") from e
    if tp is float:
        if isinstance(v, bool):
            raise ValueError(f"{where}: expected a number, got {v!r}")
        try:
            return float(v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: expected a number, got {v!r}") from e
    if tp is str:
        if not isinstance(v, str):
            raise ValueError(f"{where}: expected a string, got {v!r}")
        return v
    raise TypeError(f"{where}: unsupported config type {tp}")


def _parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (numbers, lists, true/null), else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_overrides(args: list[str]) -> dict[str, dict[str, Any]]:
    """``['--optim.lr=1e-3', '--data.train', 'x.tar']`` -> ``{'optim': {'lr': 0.001}, 'data': {...}}``."""
    out: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or "." not in a.split("=", 1)[0]:
            raise ValueError(f"expected --section.key=value, got {a!r}")
        if "=" in a:
            key, text = a[2:].split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ValueError(f"{a} needs a value")
            key, text = a[2:], args[i + 1]
            i += 1
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name.replace("-", "_")] = _parse_value(text)
        i += 1
    return out


def _read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:  # pragma: no cover - pyyaml comes with the [train] extra
            raise ImportError("reading YAML configs needs pyyaml (pip install 'torchclip[train]'); JSON works "
                              "without it") from e
        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of sections")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Defaults <- config file (YAML/JSON) <- overrides (``--section.key=value`` list or nested dict)."""
    data: dict[str, Any] = _read_file(path) if path else {}
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    for section, values in extra.items():
        base = data.setdefault(section, {})
        if not isinstance(base, dict):
            raise ValueError(f"section {section!r} must be a mapping")
        base.update(values)
    return TrainConfig.from_dict(data)
