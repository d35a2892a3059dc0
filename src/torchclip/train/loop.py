"""The training loop, top to bottom: setup, resume, then steps of (data -> gradients -> update -> log/eval/save).

The one non-obvious piece is :func:`accumulate_gradients`. With ``accum_steps = k`` the contrastive loss of
k micro-batches must be the loss of *one* batch of k*B (every sample a negative for every other), which a
naive per-micro-batch loss is not. We cache features instead (GradCache): a no-grad forward of all k
micro-batches, the loss on the cached [k*B, E] features with gradients to the features, then a re-forward
of each micro-batch that backpropagates those feature gradients into the weights. The result equals the
big batch's gradient (tested), at the price of a second forward.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import load_model
from ..config import get_preset
from ..data import (
    Batch,
    CaptionAugment,
    ContrastiveStream,
    ImageAugment,
    StyleAugment,
    expand_urls,
    get_caption,
    iter_tar,
    read_csv,
    seed_everything,
)
from ..evaluation.templates import load_class_prompts
from ..loss import clip_loss, siglip_loss
from ..model import CLIP
from ..optim import clamp_logit_scale_, cosine_schedule, param_groups
from ..tokenizer import Tokenizer, check_compatible, load_tokenizer
from . import distributed as D
from .config import TrainConfig
from .evaluate import check_class_prompts, evaluate_sets, load_eval_sets
from .logs import MetricsLogger, environment, record_environment
from .state import (
    RunFolderError,
    RunWriteError,
    checkpoint_step,
    clean_temp_files,
    clear_run,
    latest_intact_checkpoint,
    list_checkpoints,
    read_resume_state,
    rng_state,
    run_contents,
    save_checkpoint,
    set_rng_state,
)

__all__ = ["train", "accumulate_gradients", "autocast_dtype", "cpu_has_fast_bf16", "build_model",
           "build_tokenizer", "NonFiniteLossError", "RunFolderError", "RunWriteError"]


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) was NaN/inf and ``run.nonfinite`` says stop."""


# ---- precision ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """Whether bf16 matmuls are native on this CPU (AMX / AVX512-BF16), else they are emulated and slow.

    On CPUs without those units a bf16 matmul runs >100x slower than fp32, so autocast would be a large
    slowdown, not a speedup. The flags decide when /proc/cpuinfo exists; otherwise a tiny timed probe.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
        return any(f in flags for f in (" amx_bf16", " avx512_bf16"))
    except OSError:
        pass
    a = torch.randn(256, 256)
    timings = []
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x
        t = time.perf_counter()
        for _ in range(3):
            x @ x
        timings.append(time.perf_counter() - t)
    return timings[1] < 2 * timings[0]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``run.precision`` on ``device``; None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


# ---- tokenizer and model ----------------------------------------------------------------------------------


def _captions(source: str, caption_key: str, limit: int) -> Iterator[str]:
    """Up to ``limit`` raw captions of the training data (no image decoding), for vocabulary training."""
    rows = read_csv(source) if source.lower().endswith((".csv", ".tsv", ".tab")) else None
    items = iter(rows) if rows is not None else (x for url in expand_urls(source) for x in iter_tar(url))
    n = 0
    for raw in items:
        try:
            yield get_caption(raw, caption_key)
        except Exception:  # a skipped sample: SkipSample
            continue
        n += 1
        if n >= limit:
            return


def build_tokenizer(cfg: TrainConfig, out: Path, info: D.DistInfo) -> Tokenizer:
    """OpenAI's vocabulary, a given merges file, or ``bpe:N`` trained on the captions; saved in the run
    folder in every case (as ``tokenizer.txt.gz``, where torchclip's evaluation finds it next to the
    checkpoints), so the folder alone holds everything the model needs."""
    if cfg.model.text_tower:  # a pretrained language model's own tokenizer, saved beside the model
        from ..hf_text import hf_text_config

        _, tok, _ = hf_text_config(cfg.model.text_tower, context_length=cfg.model.context_length or 64)
        if info.is_main and not (out / "tokenizer.json").exists():
            tok.save_hf(out)
        return tok
    ctx = cfg.model.context_length or get_preset(cfg.model.preset).text.context_length
    vocab = cfg.data.vocab
    path = out / "tokenizer.txt.gz"
    if vocab.startswith("bpe:"):
        if info.is_main and not path.exists():
            from ..bpe_train import train_bpe

            texts = list(_captions(cfg.data.train, cfg.data.caption_key, cfg.data.bpe_samples))
            texts += [t.format("") for t in cfg.data.templates] * 10
            train_bpe(texts, int(vocab.split(":", 1)[1]), context_length=ctx).save(path)
        D.barrier()
        return Tokenizer.from_file(path, context_length=ctx)
    tok = load_tokenizer(None if vocab == "openai" else vocab, context_length=ctx)
    if info.is_main and not path.exists():
        tok.save(path)
    return tok


def build_model(cfg: TrainConfig, tokenizer: Tokenizer) -> CLIP:
    """Preset + shape overrides (random init), or any checkpoint ``load()`` reads; towers locked as asked."""
    m = cfg.model
    siglip = cfg.optim.loss == "siglip"
    start_bias = -10.0 if m.init_logit_bias is None else m.init_logit_bias  # SigLIP's start unless given
    if m.pretrained:
        model = load_model(m.pretrained, activation=m.activation)
        if model.logit_bias is not None and not siglip:  # the softmax loss has no use for a sigmoid model's bias
            model.logit_bias = None
            model.config = model.config.replace(init_logit_bias=None)
        elif model.logit_bias is None and siglip:  # the sigmoid loss needs one
            model.logit_bias = nn.Parameter(torch.tensor(start_bias, device=model.logit_scale.device))
            model.config = model.config.replace(init_logit_bias=start_bias)
        model.train()
    else:
        base = get_preset(m.preset)
        v, t = base.vision, base.text

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        vision = type(v)(image_size=pick(m.image_size, v.image_size), layers=pick(m.vision_layers, v.layers),
                         width=pick(m.vision_width, v.width), patch_size=pick(m.patch_size, v.patch_size),
                         head_width=v.head_width, mlp_ratio=v.mlp_ratio,
                         patch_dropout=pick(m.patch_dropout, v.patch_dropout))
        text = type(t)(context_length=tokenizer.context_length, vocab_size=tokenizer.vocab_size,
                       width=pick(m.text_width, t.width), heads=pick(m.text_heads, t.heads),
                       layers=pick(m.text_layers, t.layers), mlp_ratio=t.mlp_ratio,
                       sot_id=tokenizer.sot_id, eot_id=tokenizer.eot_id, pad_id=tokenizer.pad_id)
        config = base.replace(vision=vision, text=text, embed_dim=pick(m.embed_dim, base.embed_dim),
                              activation=pick(m.activation, base.activation),
                              init_logit_scale=pick(m.init_logit_scale, math.log(10) if siglip else base.init_logit_scale),
                              init_logit_bias=start_bias if siglip else None,
                              source=f"torchclip.train from preset {m.preset}")
        if m.text_tower:
            from ..hf_text import create_lit_model

            model = create_lit_model(config, m.text_tower, context_length=tokenizer.context_length,
                                     pooling=m.text_pooling, proj=m.text_proj)
        else:
            model = CLIP(config)
    if m.pretrained and m.patch_dropout is not None:
        if not hasattr(model.visual, "patch_dropout"):
            raise ValueError("model.patch_dropout needs a ViT image tower; the checkpoint has a ResNet")
        model.visual.patch_dropout = m.patch_dropout  # training-only knob; the saved config keeps its own
    check_compatible(tokenizer, model.config.text)
    for tower, locked in ((model.visual, m.lock_image), (model.text, m.lock_text)):
        for p in tower.parameters():
            p.requires_grad_(not locked)
    if m.lock_text:
        for p in _still_training_text(model, m.lock_text_unlocked_layers):
            p.requires_grad_(True)
    model.set_grad_checkpointing(m.grad_checkpointing)
    return model


def _still_training_text(model: CLIP, unlocked_layers: int) -> list[nn.Parameter]:
    """What of a locked text tower still trains: its last ``unlocked_layers`` blocks (with the final norm
    and the projection), and for a pretrained language model always the projection into the shared space
    (LiT trains a head on the locked representation)."""
    text = model.text
    if hasattr(text, "encoder"):  # torchclip.hf_text.HFTextTower
        stacks = [m for m in text.encoder.modules() if isinstance(m, nn.ModuleList)]
        blocks = list(stacks[0]) if stacks else []
        head: list[nn.Module] = [text.proj]
    else:
        blocks = list(text.transformer.blocks)
        head = [text.norm_final] if unlocked_layers else []
    modules = head + (blocks[len(blocks) - unlocked_layers:] if unlocked_layers else [])
    params = [p for m in modules for p in m.parameters()]
    if unlocked_layers and isinstance(getattr(text, "proj", None), nn.Parameter):
        params.append(text.proj)
    return params


# ---- one step's gradients ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm running stats unchanged during the cache pass (momentum 0), so they update once per sample."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def _sync_context(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's all-reduce (or FSDP2's reduce-scatter) on all but the last micro-batch's backward."""
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def accumulate_gradients(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                         autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                         loss_scale: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
                         loss_fn: Callable[..., torch.Tensor] = clip_loss) -> torch.Tensor | None:
    """Add to ``.grad`` the gradient of the contrastive loss over the *concatenation* of ``batches``.

    Returns the loss (averaged over ranks), or None -- with no gradient touched -- when it is not finite.
    ``model`` is the (possibly DDP/FSDP-wrapped) :class:`TwoTower`; under DDP the loss uses features of
    every rank (``clip_loss``'s local loss with gathered features), so negatives span the global batch.
    """
    inner = D.unwrap(model)
    if len(batches) == 1:
        pixels, ids = batches[0]
        with autocast():
            img, txt, *scalars = model(pixels, ids)  # scalars: exp(logit_scale) [, logit_bias]
            loss = loss_fn(img, txt, *scalars)
        value = D.all_reduce_mean(loss.detach().float())
        if not bool(torch.isfinite(value)):
            return None
        loss_scale(loss).backward()
        return value
    # 1. features of every micro-batch, without a graph. The RNG state before each micro-batch is kept so
    #    that step 3 replays the same random draws (patch dropout), or the gradients would not be exact.
    rng_before: list[dict[str, Any]] = []
    feats = []
    with torch.no_grad(), _frozen_batchnorm_stats(inner), autocast():
        for pixels, ids in batches:
            rng_before.append(rng_state())
            feats.append(inner(pixels, ids))
    rng_after = rng_state()
    img_all = torch.cat([f[0] for f in feats]).detach().requires_grad_()  # [k*B, E]
    txt_all = torch.cat([f[1] for f in feats]).detach().requires_grad_()  # [k*B, E]
    scalars = [x.detach().requires_grad_() for x in feats[0][2:]]  # [] each: exp(logit_scale) [, logit_bias]
    # 2. the loss of the whole accumulated batch; gradients w.r.t. the cached features, the scale (and bias)
    with autocast():
        loss = loss_fn(img_all, txt_all, *scalars)
    value = D.all_reduce_mean(loss.detach().float())
    if not bool(torch.isfinite(value)):
        return None
    loss_scale(loss).backward()
    # 3. re-forward each micro-batch with a graph and push the cached feature gradients into the weights
    start = 0
    for j, (pixels, ids) in enumerate(batches):
        last = j == len(batches) - 1
        n = pixels.shape[0]
        set_rng_state(rng_before[j])
        with _sync_context(model, last):
            with autocast():
                img, txt, *s = model(pixels, ids)
            outs = [img, txt] + (s if last else [])
            grads = [img_all.grad[start:start + n], txt_all.grad[start:start + n]] + (
                [x.grad for x in scalars] if last else [])
            pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
            if pairs:
                # d/dtheta of sum(out * g) is the vector-Jacobian product we want. (A scalar surrogate rather
                # than autograd.backward(outs, grads): the multi-root call costs seconds on its first use.)
                sum((o * g.to(o.dtype)).sum() for o, g in pairs).backward()
        start += n
    set_rng_state(rng_after)
    return value


# ---- the run -----------------------------------------------------------------------------------------------


def _state_dict(cfg: TrainConfig, step: int, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                scaler: Any, data_pos: dict[str, Any], skips: dict[str, int], nonfinite: int,
                world: int, ema: nn.Module | None) -> dict[str, Any]:
    return {
        "ema": None if ema is None else ema.state_dict(),
        "step": step,
        "torchclip_config": D.unwrap(model).clip.config.to_dict(),
        "model": D.model_state_dict(model),
        "optimizer": D.optimizer_state_dict(model, opt),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "data": data_pos,
        "skips": dict(skips),
        "nonfinite": nonfinite,
        "rng": rng_state(),
        "train_config": cfg.to_dict(),
        "world_size": world,
    }


def _gather_cursors(cursors: dict[int, int]) -> dict[str, int]:
    """Every rank's stream cursors in one dict (stream ids are global, so they never collide)."""
    import torch.distributed as dist

    parts = [cursors]
    if dist.is_available() and dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, cursors)
    return {str(k): int(v) for p in parts for k, v in p.items()}


def _check_resumable(state: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse a checkpoint whose model or vocabulary differs from the config's, before anything is written."""
    saved = state.get("train_config")
    if not isinstance(saved, dict):
        return
    now = cfg.to_dict()
    # the starting weights and activation memory do not change what a checkpoint holds
    ignored = {("model", "pretrained"), ("model", "grad_checkpointing")}
    diffs = [f"{sec}.{key}={(saved.get(sec) or {}).get(key)!r} (this config: {value!r})"
             for sec in ("model", "data") for key, value in now[sec].items()
             if (sec == "model" or key == "vocab") and (sec, key) not in ignored
             and (saved.get(sec) or {}).get(key, value) != value]
    if bool(state.get("ema")) != bool(cfg.optim.ema):
        diffs.append(f"{'a' if state.get('ema') else 'no'} weight average (this config: optim.ema={cfg.optim.ema})")
    if diffs:
        raise RunFolderError(f"checkpoint {path} was trained with {', '.join(diffs)}: resume with the run's own "
                             f"config (--config {Path(cfg.run.output_dir) / 'config.json'}), or start a new run "
                             "in another run.output_dir")


def _kept(ckpt_dir: Path, step: int) -> str:
    """What a run folder still holds after a failed write, for the error message."""
    done = [p for p in list_checkpoints(ckpt_dir) if checkpoint_step(p) <= step]
    if not done:
        return "no checkpoint had been written yet"
    return f"the run is intact up to {done[-1]} (step {checkpoint_step(done[-1])}); rerun with --resume once it can write"


def train(cfg: TrainConfig, resume: bool | str = False, overwrite: bool = False) -> dict[str, float]:
    """Run (or resume) training as ``cfg`` says; returns the last logged metrics (loss and evaluation).

    A folder that already holds a run is refused (``RunFolderError``) unless ``resume`` continues it or
    ``overwrite`` replaces it. ``resume=True`` continues from the newest checkpoint that loads (damaged
    newer ones are set aside as ``*.damaged`` and named in the log); nothing in the folder changes until
    the checkpoint is known to fit the config. A failed write raises ``RunWriteError`` saying what was kept.
    """
    out = Path(cfg.run.output_dir)
    ckpt_dir = out / "checkpoints"
    held = run_contents(out)
    if held and not resume and not overwrite:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise RunFolderError(f"{out} already holds a run ({shown}): continue it with --resume, replace it with "
                             "--overwrite, or choose another --run.output_dir")
    info = D.init_distributed(cfg.run.device, cfg.dist.backend, cfg.dist.timeout_s)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)

    # the checkpoint to resume from is read and checked before anything in the folder changes
    path: Path | None = None
    state: dict[str, Any] | None = None
    damaged: list[tuple[Path, str]] = []
    if resume is True:
        found = latest_intact_checkpoint(ckpt_dir, set_aside=info.is_main)
        if found is not None:
            path, state, damaged = found
    elif resume:
        path = Path(resume)
        try:
            state = read_resume_state(path)
        except ValueError as e:
            raise RunFolderError(str(e)) from None
    if state is not None:
        _check_resumable(state, cfg, path)

    config_json = json.dumps(cfg.to_dict(), indent=2) + "\n"
    if info.is_main:
        try:
            if overwrite:
                clear_run(out)
            out.mkdir(parents=True, exist_ok=True)
            clean_temp_files(ckpt_dir)
            if state is None:
                (out / "config.json").write_text(config_json)
        except OSError as e:
            raise RunWriteError(f"cannot write the run folder {out}: {e.strerror or e} ({e.filename or out}); "
                                "nothing of this run was written") from e
    D.barrier()
    seed_everything(cfg.run.seed + info.rank)
    amp = autocast_dtype(cfg.run.precision, info.device)
    tokenizer = build_tokenizer(cfg, out, info)
    clip = build_model(cfg, tokenizer).to(info.device)
    module = D.TwoTower(clip, cfg.model.lock_image, cfg.model.lock_text)
    model = D.wrap_model(module, info, cfg.dist.strategy)
    total = cfg.total_steps(info.world_size)
    o = cfg.optim
    vit = not clip.config.vision.is_resnet
    opt = torch.optim.AdamW(param_groups(clip, o.weight_decay), lr=o.lr,
                            betas=(o.beta1, o.beta2 or (0.98 if vit else 0.999)), eps=o.eps or (1e-6 if vit else 1e-8))
    sched = cosine_schedule(opt, min(o.warmup, total), total)
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp == torch.float16)
    # the weights' moving average (a copy of the model), updated after every optimizer step
    ema = (torch.optim.swa_utils.AveragedModel(clip, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(o.ema),
                                               use_buffers=True) if o.ema else None)
    loss_fn = siglip_loss if o.loss == "siglip" else functools.partial(clip_loss, soft_targets=o.soft_targets)

    # resume: weights, optimizer, schedule, scaler, RNG and the data position
    step, batches_seen, cursors, skips, nonfinite = 0, 0, {}, {}, 0
    if state is not None:
        D.load_model_state(model, state["model"])
        D.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        step, skips, nonfinite = int(state["step"]), dict(state["skips"]), int(state["nonfinite"])
        batches_seen = int(state["data"]["batches"])
        cursors = {int(k): v for k, v in state["data"]["cursors"].items()}
        if state["world_size"] != info.world_size:
            cursors = {}  # a different world size makes different streams: data restarts (weights do not)
        del state
        if info.is_main:  # the resumed run's config, now that its checkpoint is known to fit
            (out / "config.json").write_text(config_json)
    logger = MetricsLogger(out, enabled=info.is_main, tensorboard=cfg.run.tensorboard, progress=cfg.run.progress,
                           # a resumed run rewinds its logs to the checkpoint, step 0 if none was written yet
                           resume_step=step if (path or resume) else None)
    if info.is_main:
        logger.info(f"model {clip.num_params() / 1e6:.2f}M params, {total} steps, global batch "
                    f"{cfg.data.batch_size * o.accum_steps * info.world_size}, precision "
                    f"{amp or torch.float32}, world {info.world_size}" + (f", resumed from {path}" if path else ""))
        for bad, reason in damaged:
            logger.info(f"{reason}; set aside as {bad.name}.damaged, resumed from {path}")
        env = environment(info.device, amp, info.world_size)
        record_environment(out, step, env)
        logger.info(f"torch {env['packages'].get('torch', '?')} on {env['cpu']} ({env['cpu_capability']}"
                    + (f", {env['gpu']}" if env["gpu"] else "") + f"): {out / 'environment.json'}")

    d = cfg.data
    nw = d.num_workers
    stream = ContrastiveStream(
        d.train, image_size=clip.config.vision.image_size, tokenizer=tokenizer, batch_size=d.batch_size,
        seed=cfg.run.seed, rank=info.rank, world_size=info.world_size, num_workers=nw,
        shuffle_buffer=d.shuffle_buffer, resampled=d.resampled, caption_key=d.caption_key,
        csv_image_key=d.csv_image_key, csv_caption_key=d.csv_caption_key,
        image_augment=ImageAugment(d.crop_scale, d.crop_ratio, d.hflip, d.color_jitter, d.grayscale,
                                   StyleAugment(d.flatten, d.outline, d.random_conv), d.zoom_out,
                                   tuple(d.zoom_out_scale), d.trim_margin),
        caption_augment=CaptionAugment(d.tag_dropout, d.shuffle_tags, d.templates, d.template_prob, d.name_dropout),
        start=cursors, rotate=batches_seen % max(nw, 1), skip_bad_shards=d.skip_bad_shards)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=nw, prefetch_factor=4 if nw else None,
                                         pin_memory=info.device.type == "cuda", persistent_workers=False)
    batches: Iterator[Batch] = iter(loader)
    eval_sets = (load_eval_sets(cfg.eval.sets, clip.config.vision.image_size, cfg.eval.trim_margin)
                 if cfg.eval.sets else [])
    class_prompts = {key: load_class_prompts(path) for key, path in (e.split("=", 1) for e in cfg.eval.class_prompts)}
    check_class_prompts(eval_sets, cfg.eval.exclude, class_prompts)  # a missing class fails now, not at step N
    hubness = ({b.name: b.pixels for b in load_eval_sets(cfg.eval.hubness, clip.config.vision.image_size,
                                                          cfg.eval.trim_margin)} if eval_sets else {})  # key -> bank
    for key, bank in hubness.items():  # now, not at the first evaluation
        if len(bank) < cfg.eval.hubness_k:
            raise ValueError(f"eval.hubness bank for {key!r} has {len(bank)} images, fewer than "
                             f"eval.hubness_k={cfg.eval.hubness_k}")

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(info.device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def evaluate() -> dict[str, float]:
        if not eval_sets:
            return {}
        fsdp = hasattr(model, "unshard")
        if fsdp:
            model.unshard()
        with autocast():
            res = evaluate_sets(clip if ema is None else ema.module, tokenizer, eval_sets, cfg.eval.label_keys, cfg.eval.templates,
                                cfg.eval.exclude, cfg.eval.batch_size, class_prompts, hubness, cfg.eval.hubness_k)
        if fsdp:
            model.reshard()
        return res

    last: dict[str, float] = {}
    model.train()
    t_log, n_log, wait, paused = time.perf_counter(), 0, 0.0, 0.0
    try:
        while step < total:
            # data: k micro-batches; remember where every stream is, for resume
            t0 = time.perf_counter()
            micro = []
            for _ in range(o.accum_steps):
                b = next(batches)
                cursors[b.stream] = b.cursor
                batches_seen += 1
                for k, v in b.skips.items():
                    skips[k] = skips.get(k, 0) + v
                micro.append((b.pixels.to(info.device, non_blocking=True), b.ids.to(info.device, non_blocking=True)))
            wait += time.perf_counter() - t0

            # gradients (exact over the accumulated and global batch), then the update
            loss = accumulate_gradients(model, micro, autocast, scaler.scale, loss_fn)
            grad_norm = float("nan")
            if loss is not None:
                D.sync_replicated_grads(model)
                scaler.unscale_(opt)
                params = [p for p in clip.parameters() if p.grad is not None]
                gn = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
                grad_norm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
            if loss is None or (not math.isfinite(grad_norm) and not scaler.is_enabled()):
                nonfinite += 1
                what = "loss" if loss is None else "gradient norm"
                msg = (f"step {step}: non-finite {what} ({nonfinite} in a row); lr {sched.get_last_lr()[0]:.3g}, "
                       f"logit_scale {float(clip.logit_scale.detach().exp()):.2f}. Lower optim.lr, raise optim.warmup, "
                       "or check the data")
                if cfg.run.nonfinite == "stop" or nonfinite > cfg.run.max_nonfinite:
                    raise NonFiniteLossError(msg + "; stopping (run.nonfinite=stop or run.max_nonfinite reached)")
                logger.info(msg + "; step skipped (run.nonfinite=skip)")
                opt.zero_grad(set_to_none=True)
            else:
                nonfinite = 0
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                clamp_logit_scale_(clip.logit_scale, o.max_logit_scale)
                if ema is not None:
                    ema.update_parameters(clip)
            sched.step()
            step += 1
            n_log += 1

            # logs, evaluation, checkpoints
            if step % cfg.run.log_every == 0 or step == total:
                dt = max(time.perf_counter() - t_log - paused, 1e-9)
                samples = n_log * d.batch_size * o.accum_steps * info.world_size
                last = {"loss": float("nan") if loss is None else float(loss), "lr": sched.get_last_lr()[0],
                        "logit_scale": float(clip.logit_scale.detach().exp()), "grad_norm": grad_norm,
                        "samples_per_s": samples / dt, "data_wait_frac": wait / dt}
                if clip.logit_bias is not None:
                    last["logit_bias"] = float(clip.logit_bias.detach())
                last.update({f"skipped/{k}": float(v) for k, v in skips.items()})
                logger.log(step, last)
                t_log, n_log, wait, paused = time.perf_counter(), 0, 0.0, 0.0
            logger.progress(step, total, last)
            t_pause = time.perf_counter()
            if (cfg.eval.every and step % cfg.eval.every == 0) or step == total:
                res = evaluate()
                if res:
                    logger.log(step, res, kind="eval")
                    last.update(res)
            if step % cfg.run.save_every == 0 or step == total:
                data_pos = {"batches": batches_seen, "cursors": _gather_cursors(cursors)}
                state = _state_dict(cfg, step, model, opt, sched, scaler, data_pos, skips, nonfinite,
                                    info.world_size, ema)
                if info.is_main:
                    try:
                        save_checkpoint(ckpt_dir, step, state, keep=cfg.run.keep_checkpoints)
                    except OSError as e:
                        raise RunWriteError(f"cannot write checkpoint {ckpt_dir / f'ckpt-{step:08d}.pt'}: "
                                            f"{e.strerror or e}; {_kept(ckpt_dir, step)}") from e
                del state
                D.barrier()
            paused += time.perf_counter() - t_pause
    finally:
        logger.close()
        del batches, loader
    final = D.model_state_dict(model) if ema is None else ema.module.state_dict()  # gathered under FSDP
    if info.is_main:
        from ..checkpoints import save

        plain = CLIP(clip.config)
        plain.load_state_dict(final)
        if cfg.model.text_tower or cfg.data.vocab != "openai":  # the one file carries its own vocabulary too
            plain.tokenizer = tokenizer
        try:
            save(plain, out / "model.safetensors")
        except OSError as e:
            raise RunWriteError(f"cannot write the model {out / 'model.safetensors'}: {e.strerror or e}; "
                                f"{_kept(ckpt_dir, step)}") from e
    D.barrier()
    return last
