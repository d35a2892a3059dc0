"""Trainer: config parsing, exact gradient accumulation, a one-step run, LiT locking, non-finite handling, the
weights' moving average."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from trainkit import make_shards, tiny_overrides

from torchclip.checkpoints import load_model, read_checkpoint
from torchclip.config import CLIPConfig, TextConfig, VisionConfig
from torchclip.loss import clip_loss
from torchclip.model import CLIP
from torchclip.train import accumulate_gradients, load_config, train
from torchclip.train.cli import main as cli_main
from torchclip.train.config import TrainConfig, parse_overrides
from torchclip.train.distributed import TwoTower
from torchclip.train.logs import read_metrics
from torchclip.train.loop import NonFiniteLossError, RunFolderError, autocast_dtype
from torchclip.train.state import list_checkpoints, load_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny tensors gain nothing from two, and on a loaded 2-core box OpenMP's
    spin-waiting threads make each op orders of magnitude slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_shards(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=16)


# ---- config -------------------------------------------------------------------------------------------------


def test_overrides_are_typed() -> None:
    cfg = load_config(None, ["--optim.lr=1e-3", "--data.crop_scale=[0.5, 1]", "--run.tensorboard", "false",
                             "--eval.sets=a=x.tar,b=y.tar", "--model.pretrained=none", "--optim.epochs=2.5"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.data.crop_scale == (0.5, 1.0)
    assert cfg.run.tensorboard is False
    assert cfg.eval.sets == ("a=x.tar", "b=y.tar")
    assert cfg.model.pretrained is None and cfg.optim.epochs == 2.5


@pytest.mark.parametrize("bad", [["--optim.warmpu=5"], ["--optimizer.lr=1"], ["--optim.steps=ten"],
                                 ["--run.precision=fp8"], ["--data.batch_size=0"], ["--optim.lr"], ["lr=1"]])
def test_bad_overrides_are_rejected(bad: list[str]) -> None:
    with pytest.raises(ValueError):
        load_config(None, bad)


def test_config_file_roundtrip_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_text("optim:\n  lr: 0.002\n  steps: 7\ndata:\n  templates: ['a {}']\n")
    cfg = load_config(tmp_path / "c.yaml", ["--optim.steps=9"])
    assert (cfg.optim.lr, cfg.optim.steps, cfg.data.templates) == (0.002, 9, ("a {}",))
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.json") == cfg
    assert cli_main(["--config", str(tmp_path / "c.yaml"), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["optim"]["lr"] == 0.002
    assert cli_main(["--config", str(tmp_path / "c.yaml"), "--optim.nope=1"]) == 2
    assert "unknown keys in [optim]" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"optim": {"lr": 1}, "extra": {}}')
    with pytest.raises(ValueError, match="unknown config sections"):
        load_config(tmp_path / "bad.json")
    assert parse_overrides(["--a.b-c", "3"]) == {"a": {"b_c": 3}}


def test_epochs_to_steps() -> None:
    cfg = TrainConfig.from_dict({"optim": {"epochs": 2, "accum_steps": 2}, "data": {"num_samples": 100, "batch_size": 8}})
    assert cfg.total_steps(world_size=2) == math.ceil(2 * 100 / 32)


def test_bf16_autocast_only_where_fast() -> None:
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        assert autocast_dtype("auto", torch.device("cpu")) is None


# ---- exact accumulation ---------------------------------------------------------------------------------------


def _tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    cfg = CLIPConfig(embed_dim=16, vision=VisionConfig(image_size=16, layers=2, width=64, patch_size=8),
                     text=TextConfig(context_length=12, vocab_size=100, width=32, heads=2, layers=2), activation="gelu")
    return CLIP(cfg).double()


def _grads(model: TwoTower) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lock_image", [False, True])
def test_accumulation_equals_one_big_batch(lock_image: bool) -> None:
    """4 micro-batches of B give the gradients of one batch of 4B (every sample a negative for all others)."""
    B, k = 3, 4
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(k * B, 3, 16, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(1, 98, (k * B, 12), generator=g)
    ids[:, 0] = 98
    ids[torch.arange(k * B), torch.randint(3, 12, (k * B,), generator=g)] = 99  # EOT somewhere in each row
    m = TwoTower(_tiny_clip(), lock_image=lock_image)
    if lock_image:
        m.clip.visual.requires_grad_(False)
    big = accumulate_gradients(m, [(pixels, ids)])
    ref = _grads(m)
    m.zero_grad(set_to_none=True)
    acc = accumulate_gradients(m, [(pixels[i * B:(i + 1) * B], ids[i * B:(i + 1) * B]) for i in range(k)])
    got = _grads(m)
    assert float(big) == pytest.approx(float(acc), rel=1e-12)
    assert set(got) == set(ref) and "clip.logit_scale" in got
    assert any(n.startswith("clip.visual") for n in got) == (not lock_image)
    for n in ref:
        # fp64 model, but LayerNorm computes in fp32 (layers.LayerNorm upcasts to fp32 only): ~1e-7 relative
        torch.testing.assert_close(got[n], ref[n], rtol=1e-6, atol=1e-7, msg=n)
    # and the naive alternative (a separate loss per micro-batch) is measurably different
    m.zero_grad(set_to_none=True)
    for i in range(k):
        accumulate_gradients(m, [(pixels[i * B:(i + 1) * B], ids[i * B:(i + 1) * B])])
    naive = _grads(m)
    assert not torch.allclose(naive["clip.text.proj"] / k, ref["clip.text.proj"], rtol=1e-3)


def test_accumulation_exact_with_patch_dropout() -> None:
    """Random patch dropout: the re-forward replays pass 1's draws, so accumulation is still exact."""
    B, k = 3, 3
    torch.manual_seed(0)
    cfg = CLIPConfig(embed_dim=16, vision=VisionConfig(image_size=16, layers=2, width=64, patch_size=4,
                                                       patch_dropout=0.5),
                     text=TextConfig(context_length=12, vocab_size=100, width=32, heads=2, layers=2), activation="gelu")
    m = TwoTower(CLIP(cfg).double())
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(k * B, 3, 16, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(1, 98, (k * B, 12), generator=g)
    ids[:, 0], ids[:, -1] = 98, 99
    micro = [(pixels[i * B:(i + 1) * B], ids[i * B:(i + 1) * B]) for i in range(k)]
    # reference: the same micro-batch forwards in the same RNG order, with a graph, one loss over all of them
    torch.manual_seed(7)
    outs = [m(p, t) for p, t in micro]
    clip_loss(torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), outs[-1][2]).backward()
    ref, after_ref = _grads(m), torch.rand(())
    m.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    accumulate_gradients(m, micro)
    got, after_acc = _grads(m), torch.rand(())
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-6, atol=1e-7, msg=n)
    assert float(after_ref) == float(after_acc)  # the RNG stream advanced exactly as one pass would
    # the masks really are random: another seed gives other gradients
    m.zero_grad(set_to_none=True)
    torch.manual_seed(8)
    accumulate_gradients(m, micro)
    assert not torch.allclose(_grads(m)["clip.visual.proj"], ref["clip.visual.proj"], rtol=1e-3)


# ---- runs -------------------------------------------------------------------------------------------------------


def test_one_step_run_writes_everything(tmp_path: Path, shards: str) -> None:
    out = tmp_path / "run"
    val = shards.replace("{000..001}", "000")
    cfg = TrainConfig.from_dict(tiny_overrides(shards, out, optim={"steps": 2, "accum_steps": 2},
                                               run={"tensorboard": True},
                                               eval={"sets": [f"val={val}"], "label_keys": ["name", "category"],
                                                     "templates": ["a {}."], "every": 1}))
    last = train(cfg)
    assert math.isfinite(last["loss"]) and "val/name/acc1" in last and "val/category/t2i_R@1" in last
    # image->prompt recall@k is top-k accuracy: reported once, as accK
    assert "val/name/acc10" in last and not [k for k in last if "i2t" in k]
    assert json.loads((out / "config.json").read_text()) == cfg.to_dict()
    env = json.loads((out / "environment.json").read_text())  # the machine and packages beside the config
    assert len(env) == 1 and env[0]["step"] == 0 and env[0]["packages"]["torch"] == torch.__version__
    assert env[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env[0]["world_size"] == 1
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2] and all(r["samples_per_s"] > 0 for r in recs)
    assert len(read_metrics(out / "metrics.jsonl", "eval")) == 2
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt-00000002.pt"]
    state = load_checkpoint(ckpts[-1])  # weights_only loader
    assert {"model", "optimizer", "scheduler", "scaler", "data", "rng", "step"} <= set(state)
    assert state["data"]["batches"] == 4
    # any checkpoint torchclip reads works as a starting point, incl. the training checkpoint itself
    model = load_model(ckpts[-1])
    assert read_checkpoint(out / "model.safetensors").config == model.config
    assert (out / "tokenizer.txt.gz").exists()
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return
    assert any((out / "tensorboard").iterdir())


def test_lit_locked_tower_and_pretrained_start(tmp_path: Path, shards: str) -> None:
    first = tmp_path / "a"
    train(TrainConfig.from_dict(tiny_overrides(shards, first, optim={"steps": 1})))
    start = load_model(first / "model.safetensors")
    out = tmp_path / "b"
    cfg = TrainConfig.from_dict(tiny_overrides(shards, out, optim={"steps": 2},
                                               model={"pretrained": str(first / "model.safetensors"), "lock_image": True},
                                               data={"vocab": str(first / "tokenizer.txt.gz")}))
    train(cfg)
    after = load_model(out / "model.safetensors")
    for (n, a), (_, b) in zip(start.state_dict().items(), after.state_dict().items()):
        if n.startswith("visual."):
            assert torch.equal(a, b), n
    assert not torch.equal(start.text.proj, after.text.proj)


def test_nonfinite_loss_skip_or_stop(tmp_path: Path, shards: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import torchclip.train.loop as loop

    real = loop.clip_loss
    calls = {"n": 0}

    def sometimes_nan(*a, **kw):  # noqa: ANN002, ANN003
        calls["n"] += 1
        loss = real(*a, **kw)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(loop, "clip_loss", sometimes_nan)
    train(TrainConfig.from_dict(tiny_overrides(shards, tmp_path / "skip", optim={"steps": 3})))
    assert "non-finite loss" in capsys.readouterr().err
    recs = read_metrics(tmp_path / "skip" / "metrics.jsonl")
    assert math.isnan(recs[1]["loss"]) and math.isfinite(recs[2]["loss"])
    calls["n"] = 0
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train(TrainConfig.from_dict(tiny_overrides(shards, tmp_path / "stop", optim={"steps": 3},
                                                   run={"nonfinite": "stop"})))


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, 1, {"x": torch.ones(3)})

    def broken_save(obj, f):  # noqa: ANN001
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"x": torch.ones(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001.pt"]


# ---- a moving average of the weights (optim.ema): what evaluation and the saved model use, kept in every
# checkpoint so a resumed run ends exactly where an uninterrupted one does --------------------------------------


def _ema_cfg(shards: str, out: Path, ema: float = 0.5) -> TrainConfig:
    return TrainConfig.from_dict(tiny_overrides(shards, out, optim={"steps": 3, "ema": ema},
                                                run={"save_every": 1, "keep_checkpoints": 5}))


def test_saved_model_is_the_moving_average_of_the_steps(tmp_path: Path, shards: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from torchclip.train import loop

    evaluated = []
    monkeypatch.setattr(loop, "evaluate_sets", lambda model, *a, **k: evaluated.append(
        {k: v.detach().clone() for k, v in model.state_dict().items()}) or {})
    out = tmp_path / "run"
    cfg = _ema_cfg(shards, out)
    train(TrainConfig.from_dict({**cfg.to_dict(), "eval": {"sets": [f"val={shards}"], "every": 3}}))
    raw = [load_checkpoint(p)["model"] for p in list_checkpoints(out / "checkpoints")]  # the weights after steps 1..3
    assert len(raw) == 3
    ema = dict(raw[0])  # the first update copies the weights, later ones move 1 - 0.5 of the way
    for step in raw[1:]:
        ema = {k: 0.5 * ema[k] + 0.5 * v if v.is_floating_point() else v for k, v in step.items()}
    saved = load_model(out / "model.safetensors").state_dict()
    moved = 0
    for k, v in saved.items():
        torch.testing.assert_close(v, ema[k], atol=1e-6, rtol=1e-6, msg=k)
        moved += not torch.allclose(v, raw[-1][k])
    assert moved > 5  # negative control: the average is not the last step's weights
    assert len(evaluated) == 1 and all(torch.equal(evaluated[0][k], v) for k, v in saved.items())  # eval saw it


def test_resume_restores_the_average(tmp_path: Path, shards: str) -> None:
    whole = tmp_path / "whole"
    train(_ema_cfg(shards, whole))
    cut = tmp_path / "cut"  # the same run stopped after step 2's checkpoint
    shutil.copytree(whole, cut)
    (cut / "model.safetensors").unlink()
    list_checkpoints(cut / "checkpoints")[-1].unlink()
    train(_ema_cfg(shards, cut), resume=True)
    a = load_model(whole / "model.safetensors").state_dict()
    b = load_model(cut / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = load_checkpoint(list_checkpoints(cut / "checkpoints")[-1])
    assert state["ema"] is not None and int(state["ema"]["n_averaged"]) == 3
    # each start is on record: the first at step 0, the resumed one at step 2
    assert [e["step"] for e in json.loads((cut / "environment.json").read_text())] == [0, 2]
    assert [e["step"] for e in json.loads((whole / "environment.json").read_text())] == [0]


def test_resume_refuses_a_checkpoint_with_the_other_setting(tmp_path: Path, shards: str) -> None:
    out = tmp_path / "run"
    train(_ema_cfg(shards, out, ema=0.0))
    assert load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["ema"] is None
    with pytest.raises(RunFolderError, match="no weight average"):
        train(_ema_cfg(shards, out, ema=0.9), resume=True)


@pytest.mark.parametrize("args,match", [(["--optim.ema=1.0"], "optim.ema"),
                                        (["--optim.ema=0.9", "--dist.strategy=fsdp"], "fsdp")])
def test_ema_config_checks(args: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(None, args)
    assert load_config(None, ["--optim.ema=0.99"]).optim.ema == 0.99


# ---- evaluation during training with each class's own prompts (eval.class_prompts) --------------------------


def test_shipped_configs_parse() -> None:
    """configs/*.yaml are the README's one-command recipes: every key known, every value in range."""
    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(paths) >= 2
    cfgs = {p.name: load_config(str(p), []) for p in paths}
    lit = cfgs["emoji-lit.yaml"]
    assert lit.model.lock_text and not lit.eval.trim_margin  # trimming was not adopted by its rule
    assert [e.split("=")[0] for e in lit.eval.hubness] == ["name"]  # the hubness correction was, for names
    assert lit.optim.loss == "siglip" and lit.model.init_logit_bias is None  # adopted in 1r, SigLIP's start


def test_eval_class_prompts_config_is_checked() -> None:
    base = {"label_keys": ["name", "category"]}
    ok = TrainConfig.from_dict({"eval": {**base, "class_prompts": ["category=p.json"]}})
    assert ok.eval.class_prompts == ("category=p.json",)
    for entries, words in [(["category"], "key=file.json"), (["category="], "key=file.json"),
                           (["shape=p.json"], "not one of eval.label_keys"),
                           (["category=a.json", "category=b.json"], "twice")]:
        with pytest.raises(ValueError, match=words):
            TrainConfig.from_dict({"eval": {**base, "class_prompts": entries}})


def test_eval_hubness_config_is_checked() -> None:
    base = {"label_keys": ["name", "category"]}
    ok = TrainConfig.from_dict({"eval": {**base, "hubness": ["name=a.tar::b.tar"], "hubness_k": 5}})
    assert ok.eval.hubness == ("name=a.tar::b.tar",) and ok.eval.hubness_k == 5
    for extra, words in [({"hubness": ["name"]}, "key=shards"), ({"hubness": ["shape=a.tar"]}, "not one of"),
                         ({"hubness": ["name=a.tar", "name=b.tar"]}, "twice"), ({"hubness_k": 0}, "hubness_k=0")]:
        with pytest.raises(ValueError, match=words):
            TrainConfig.from_dict({"eval": {**base, **extra}})


def test_evaluate_sets_hubness_bank() -> None:
    from evalkit import byte_tokenizer, tiny_model

    from torchclip.evaluation.zeroshot import hubness_penalty
    from torchclip.train.evaluate import EvalSet, class_embeddings, evaluate_sets, image_embeddings

    model, tok = tiny_model().eval(), byte_tokenizer()
    size, g = model.config.vision.image_size, torch.Generator().manual_seed(0)
    names = ["cat", "dog", "owl", "pig", "yak"]
    s = EvalSet("val", torch.randn(15, 3, size, size, generator=g),
                [{"name": names[i % 5], "category": "animal"} for i in range(15)])
    bank = torch.randn(12, 3, size, size, generator=g)
    plain = evaluate_sets(model, tok, [s], ["name", "category"], ["a {}."])
    got = evaluate_sets(model, tok, [s], ["name", "category"], ["a {}."], hubness={"name": bank}, hubness_k=3)
    cls = class_embeddings(model, tok, sorted(names), ["a {}."], torch.device("cpu"))  # [C, E]
    img = image_embeddings(model, s.pixels, torch.device("cpu"), 8)
    emb = image_embeddings(model, bank, torch.device("cpu"), 8)
    scores = img @ cls.T - hubness_penalty(cls.T, emb, 3) / 2  # [15, 5]
    truth = torch.tensor([sorted(names).index(m["name"]) for m in s.meta])
    assert got["val/name/acc1"] == pytest.approx(float((scores.argmax(1) == truth).float().mean()))
    assert got["val/category/acc1"] == plain["val/category/acc1"]  # only the named key is corrected
    assert got["val/name/t2i_R@1"] == plain["val/name/t2i_R@1"]  # a per-class shift: image ranks unchanged
    assert got["val/name/acc1"] != plain["val/name/acc1"]  # control: the bank changes this model's answers


def test_evaluate_sets_uses_the_class_prompts() -> None:
    from evalkit import byte_tokenizer, tiny_model

    from torchclip.evaluation.zeroshot import build_prompt_classifier
    from torchclip.train.evaluate import EvalSet, check_class_prompts, evaluate_sets, image_embeddings

    model, tok = tiny_model().eval(), byte_tokenizer()
    size = model.config.vision.image_size
    labels = ["square", "circle", "square", "circle", "square", "circle", "square"]  # odd: accuracy is never 0.5
    s = EvalSet("val", torch.randn(7, 3, size, size, generator=torch.Generator().manual_seed(0)),
                [{"category": c} for c in labels])
    plain = evaluate_sets(model, tok, [s], ["category"], ["a {}."])
    same = evaluate_sets(model, tok, [s], ["category"], ["a {}."],
                         class_prompts={"category": {"square": ["a square."], "circle": ["a circle."]}})
    assert same == pytest.approx(plain, abs=1e-6, nan_ok=True)  # one prompt per class = the template, filled
    prompts = {"square": [["a wide box."], ["four corners", "a tile"]], "circle": ["a ring.", "a round disc"]}
    got = evaluate_sets(model, tok, [s], ["category"], ["a {}."], class_prompts={"category": prompts})
    w = build_prompt_classifier(model, tok, [prompts["circle"], prompts["square"]], cache_dir=False)  # sorted classes
    scores = image_embeddings(model, s.pixels, torch.device("cpu"), 8) @ w  # [7, 2]
    truth = torch.tensor([["circle", "square"].index(c) for c in labels])
    assert got["val/category/acc1"] == pytest.approx(float((scores.argmax(1) == truth).float().mean()))
    swapped = evaluate_sets(model, tok, [s], ["category"], ["a {}."],
                            class_prompts={"category": {"square": ["a circle."], "circle": ["a square."]}})
    assert swapped["val/category/acc1"] == pytest.approx(1 - plain["val/category/acc1"])
    with pytest.raises(ValueError, match=r"'category'.*\['square'\].*'val'"):
        check_class_prompts([s], (), {"category": {"circle": ["x"]}})
    check_class_prompts([s], ("square",), {"category": {"circle": ["x"]}})  # an excluded class needs none


def test_train_hands_class_prompts_to_evaluation_and_refuses_a_missing_class(tmp_path: Path, shards: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from torchclip.train import loop

    prompts = tmp_path / "shapes.json"
    prompts.write_text(json.dumps({"square": ["a square."], "circle": [["a circle."], ["a ring", "a disc"]],
                                   "triangle": ["three sides"]}))  # more classes than the set has is fine
    seen = []
    monkeypatch.setattr(loop, "evaluate_sets", lambda *a, **k: seen.append(a[7]) or {})
    cfg = tiny_overrides(shards, tmp_path / "run", optim={"steps": 1},
                         eval={"sets": [f"val={shards}"], "label_keys": ["name", "category"],
                               "class_prompts": [f"category={prompts}"]})
    train(TrainConfig.from_dict(cfg))
    assert seen == [{"category": {"square": [["a square."]], "circle": [["a circle."], ["a ring", "a disc"]],
                                  "triangle": [["three sides"]]}}]
    prompts.write_text(json.dumps({"square": ["a square."]}))  # no prompts for 'circle'
    cfg["run"]["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(ValueError, match=r"\['circle'\]"):
        train(TrainConfig.from_dict(cfg))
    assert not list((tmp_path / "run2").glob("checkpoints/*"))  # refused before the first step


def test_training_evaluates_with_the_hubness_bank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainkit import make_shards, tiny_overrides

    from torchclip.train import loop

    seen: dict = {}

    def evaluate_sets(model, tok, sets, keys, templates, exclude, batch_size, class_prompts, hubness, hubness_k):
        seen.update(hubness=hubness, k=hubness_k)
        return {}

    monkeypatch.setattr(loop, "evaluate_sets", evaluate_sets)
    shards = make_shards(tmp_path / "shards", n_shards=1, per_shard=8)
    cfg = tiny_overrides(shards, tmp_path / "run")
    cfg["eval"] = {"sets": [f"x={shards}"], "hubness": [f"name={shards}"], "hubness_k": 3}
    loop.train(TrainConfig.from_dict(cfg))
    assert seen["k"] == 3 and list(seen["hubness"]) == ["name"]
    assert seen["hubness"]["name"].shape == (8, 3, 16, 16)  # the bank's pixels, at the model's size
    cfg["eval"]["hubness_k"] = 9
    cfg["run"]["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(ValueError, match="eval.hubness bank for 'name' has 8 images, fewer than eval.hubness_k=9"):
        loop.train(TrainConfig.from_dict(cfg))


# ---- targets from the captions' own similarity (optim.soft_targets) -------------------------------------------


@pytest.mark.parametrize("temp", [0.0, 0.2])
def test_training_uses_the_configured_soft_targets(tmp_path: Path, shards: str, monkeypatch: pytest.MonkeyPatch,
                                                   temp: float) -> None:
    from torchclip.train import loop

    seen: list[float] = []

    def spy(*args, soft_targets: float = 0.0, **kwargs):
        seen.append(soft_targets)
        return clip_loss(*args, soft_targets=soft_targets, **kwargs)

    monkeypatch.setattr(loop, "clip_loss", spy)
    cfg = TrainConfig.from_dict(tiny_overrides(shards, tmp_path / "run", optim={"steps": 2, "soft_targets": temp}))
    assert math.isfinite(train(cfg)["loss"])
    assert seen == [temp, temp]


def test_soft_targets_config_is_checked() -> None:
    with pytest.raises(ValueError, match="optim.soft_targets"):
        load_config(None, ["--optim.soft_targets=-0.1"])
    assert load_config(None, ["--optim.soft_targets=0.05"]).optim.soft_targets == 0.05


# ---- the sigmoid loss (optim.loss=siglip): a learned logit bias, trained and saved ---------------------------


def test_siglip_accumulation_equals_one_big_batch() -> None:
    """With the bias as a cached scalar like the scale, 3 micro-batches give the gradients of one batch."""
    from torchclip.loss import siglip_loss

    B, k = 3, 3
    g = torch.Generator().manual_seed(2)
    pixels = torch.randn(k * B, 3, 16, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(1, 98, (k * B, 12), generator=g)
    ids[:, 0] = 98
    ids[torch.arange(k * B), torch.randint(3, 12, (k * B,), generator=g)] = 99
    base = _tiny_clip()
    torch.manual_seed(0)
    clip = CLIP(base.config.replace(init_logit_bias=-10.0)).double()
    m = TwoTower(clip)
    big = accumulate_gradients(m, [(pixels, ids)], loss_fn=siglip_loss)
    ref = _grads(m)
    assert "clip.logit_bias" in ref and ref["clip.logit_bias"].abs() > 0
    m.zero_grad(set_to_none=True)
    acc = accumulate_gradients(m, [(pixels[i * B:(i + 1) * B], ids[i * B:(i + 1) * B]) for i in range(k)],
                               loss_fn=siglip_loss)
    got = _grads(m)
    assert float(big) == pytest.approx(float(acc), rel=1e-12)
    assert set(got) == set(ref)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-6, atol=1e-7, msg=n)
    # control: a separate loss per micro-batch gives the bias another gradient
    m.zero_grad(set_to_none=True)
    for i in range(k):
        accumulate_gradients(m, [(pixels[i * B:(i + 1) * B], ids[i * B:(i + 1) * B])], loss_fn=siglip_loss)
    assert not torch.allclose(_grads(m)["clip.logit_bias"] / k, ref["clip.logit_bias"], rtol=1e-3)


def test_siglip_run_trains_and_saves_the_bias(tmp_path: Path, shards: str) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict(tiny_overrides(shards, out, optim={"steps": 2, "loss": "siglip", "accum_steps": 2}))
    assert math.isfinite(train(cfg)["loss"])
    model = load_model(out / "model.safetensors")
    assert model.config.init_logit_bias == -10.0 and model.config.init_logit_scale == pytest.approx(math.log(10))
    assert float(model.logit_bias.detach()) != -10.0  # it trained
    # a softmax run from it drops the bias; a sigmoid run from a softmax model starts one at the value given
    first = out / "model.safetensors"
    tok = {"vocab": str(out / "tokenizer.txt.gz")}
    train(TrainConfig.from_dict(tiny_overrides(shards, tmp_path / "soft", optim={"steps": 1},
                                               model={"pretrained": str(first)}, data=tok)))
    assert load_model(tmp_path / "soft" / "model.safetensors").logit_bias is None
    train(TrainConfig.from_dict(tiny_overrides(shards, tmp_path / "sig", optim={"steps": 1, "loss": "siglip"},
                                               model={"pretrained": str(tmp_path / "soft" / "model.safetensors"),
                                                      "init_logit_bias": -5.0}, data=tok)))
    again = load_model(tmp_path / "sig" / "model.safetensors")
    assert again.config.init_logit_bias == -5.0 and abs(float(again.logit_bias.detach()) + 5.0) < 0.1


@pytest.mark.parametrize("args,match", [(["--optim.loss=sigmoid"], "optim.loss"),
                                        (["--model.init_logit_bias=-10"], "optim.loss=siglip"),
                                        (["--optim.loss=siglip", "--optim.soft_targets=0.1"], "soft_targets")])
def test_loss_config_checks(args: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_config(None, args)
    assert load_config(None, ["--optim.loss=siglip", "--model.init_logit_bias=-5"]).optim.loss == "siglip"
