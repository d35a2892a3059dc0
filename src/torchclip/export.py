"""``torchclip export``: ONNX export of both towers (dynamic batch), checked against PyTorch with ONNX
Runtime, and dynamic int8 quantization for CPU inference.

Both towers export the reference modules. Eagerly the text tower trims every batch to its longest caption
and validates ids with Python branches, neither of which an exported graph can hold, so under tracing it
skips both: under causal attention the tokens after a row's end-of-text cannot change the feature pooled
at it, so running every given position and gathering at the first end-of-text id gives the same features
(to float rounding) with static control flow. Inputs are ``input_ids`` int64
``[batch, length <= context_length]``: the tokenizer's rows, ideally cut after the batch's longest caption
with ``trim_ids`` (the sequence axis is dynamic; running all 77 positions for short captions costs several times more);
rows must hold an end-of-text id (the eager model raises otherwise, the graph would pool position 0).

Outputs are the *unnormalized* features of ``encode_image``/``encode_text`` unless ``--normalize``.
Dynamic int8 quantization (ONNX Runtime's ``quantize_dynamic``: int8 weights, activations quantized per
batch at run time) targets MatMul/Gemm, i.e. almost all of the FLOPs of a ViT and of the text tower.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import CLIP

__all__ = ["ImageTower", "TextTower", "example_ids", "trim_ids", "export_onnx", "check_onnx", "quantize_int8", "OnnxTower",
           "write_bundle",
           "DEFAULT_OPSET", "opset_range", "written_opset"]  # the command line: export_cli.py

_NAMES = {"image": ("pixels", "image_features"), "text": ("input_ids", "text_features")}


class _Tower(nn.Module):
    """One reference tower of ``model`` as an exportable module: input -> features ``[B, E]``."""

    attribute = ""

    def __init__(self, model: CLIP, normalize: bool = False) -> None:
        super().__init__()
        self.tower, self.normalize = getattr(model, self.attribute), normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tower(x)
        return F.normalize(y, dim=-1) if self.normalize else y


class ImageTower(_Tower):
    """``pixels [B, 3, R, R]`` -> features ``[B, E]`` (what ``CLIP.encode_image`` computes)."""

    attribute = "visual"


class TextTower(_Tower):
    """``input_ids [B, L]`` -> features ``[B, E]``: under tracing the reference text tower runs every position
    it is given and pools at the first end-of-text id (no data-dependent trimming or checks)."""

    attribute = "text"


def _example(model: CLIP, tower: str, batch: int = 2) -> torch.Tensor:
    if tower == "image":
        r = model.config.vision.image_size
        return torch.randn(batch, 3, r, r, generator=torch.Generator().manual_seed(0))
    return example_ids(model, [3, 9, 1, 17][:batch] + [5] * max(0, batch - 4))


def example_ids(model: CLIP, lengths: Sequence[int]) -> torch.Tensor:
    """Token rows of the given content lengths: SOT, random ids, EOT, zero padding."""
    t = model.config.text
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(len(lengths), t.context_length, dtype=torch.long)
    for i, n in enumerate(lengths):
        n = min(n, t.context_length - 2)
        ids[i, 0] = t.sot_id
        ids[i, 1 : n + 1] = torch.randint(1, min(t.sot_id, t.eot_id), (n,), generator=g)
        ids[i, n + 1] = t.eot_id
    return ids


def _cpu_fp32(model: CLIP) -> CLIP:
    """The model as exported and checked: fp32 on CPU, in eval mode; a copy if it is anything else, so
    the caller's model is never moved or cast."""
    p = next(model.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        model = copy.deepcopy(model).float().cpu()
    return model.eval()


DEFAULT_OPSET = 18


def opset_range(exporter: str = "legacy") -> tuple[int, int]:
    """The ONNX opsets ``exporter`` can write for these towers: from 14 (scaled_dot_product_attention;
    18 for the dynamo exporter) to the newest the installed torch knows."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as newest  # no public name for it
    except ImportError:  # pragma: no cover - an older or reorganised torch
        newest = 20
    return (18 if exporter == "dynamo" else 14), int(newest)


def check_opset(opset: int, exporter: str = "legacy") -> None:
    """Raise ValueError for an opset ``exporter`` cannot write."""
    lo, hi = opset_range(exporter)
    if not lo <= opset <= hi:
        raise ValueError(f"ONNX opset {opset} is outside what the {exporter} exporter writes here: {lo} to {hi}")


def written_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file declares (what an exporter actually wrote)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ValueError(f"{path} declares no ai.onnx opset")
    return int(versions[0])


def export_onnx(model: CLIP, out_dir: str | Path, *, towers: Sequence[str] = ("image", "text"),
                normalize: bool = False, opset: int = DEFAULT_OPSET, exporter: str | None = None) -> dict[str, Path]:
    """Write ``image_encoder.onnx`` / ``text_encoder.onnx`` with a dynamic batch axis (and a dynamic
    sequence axis for text: see ``trim_ids``).

    ``exporter``: ``legacy`` (TorchScript tracing; the default: a couple of seconds per tower, and the
    graph is checked numerically anyway) or ``dynamo`` (torch.export based, torch's newer default; needs
    ``onnxscript`` and takes ~20 s of fixed overhead even for a tiny model). Both give the same numbers.
    """
    exporter = exporter or "legacy"
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"exporter must be 'dynamo' or 'legacy', got {exporter!r}")
    check_opset(opset, exporter)
    for tower in towers:
        if tower not in _NAMES:
            raise ValueError(f"unknown tower {tower!r} (image, text)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = _cpu_fp32(model)
    paths: dict[str, Path] = {}
    for tower in towers:
        module = (ImageTower if tower == "image" else TextTower)(model, normalize).eval()
        inp, outp = _NAMES[tower]
        path = out / f"{tower}_encoder.onnx"
        example = _example(model, tower)
        big = sum(p.numel() * p.element_size() for p in module.parameters()) > 1_800_000_000
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; correctness is checked after
            if exporter == "dynamo":
                dims = {0: torch.export.Dim("batch", min=1, max=65536)}
                if tower == "text":
                    dims[1] = torch.export.Dim("sequence", min=2, max=model.config.text.context_length)
                torch.onnx.export(module, (example,), str(path), input_names=[inp], output_names=[outp],
                                  dynamic_shapes=(dims,), opset_version=opset, dynamo=True,
                                  external_data=big, verbose=False)
            else:
                axes = {0: "batch", 1: "sequence"} if tower == "text" else {0: "batch"}
                torch.onnx.export(module, (example,), str(path), input_names=[inp], output_names=[outp],
                                  dynamic_axes={inp: axes, outp: {0: "batch"}},
                                  opset_version=opset, dynamo=False)
        paths[tower] = path
    return paths


def write_bundle(model: CLIP, out_dir: str | Path, tokenizer: Any) -> dict[str, Any]:
    """Beside the ONNX files, what a runtime in any language needs to feed them: the preprocessing
    (``preprocess.json``) and, given one, the vocabulary (``tokenizer/vocab.json`` + ``merges.txt``, as HF's
    CLIP tokenizers read them). Returns the manifest entries describing both."""
    import json

    from .checkpoints import preprocess_config_of
    from .tokenizer import check_compatible

    out = Path(out_dir)
    pp = preprocess_config_of(model).to_dict()
    (out / "preprocess.json").write_text(json.dumps(pp, indent=2) + "\n")
    entries: dict[str, Any] = {"preprocess": {"file": "preprocess.json", **pp}, "tokenizer": None}
    if tokenizer is not None:
        t = model.config.text
        check_compatible(tokenizer, t)
        tokenizer.save_hf(out / "tokenizer")
        entries["tokenizer"] = {"folder": "tokenizer", "files": ["vocab.json", "merges.txt"],
                                "context_length": t.context_length, "vocab_size": t.vocab_size, "sot_id": t.sot_id,
                                "eot_id": t.eot_id, "pad_id": t.pad_id}
    return entries


def trim_ids(ids: torch.Tensor | np.ndarray, eot_id: int) -> torch.Tensor | np.ndarray:
    """Drop the columns after the last end-of-text of the batch: ``[B, L] -> [B, longest + 1]``.

    Causal attention makes those columns irrelevant to every row's pooled feature, so the result is the
    same (to float rounding) and the text tower does a fraction of the work: captions are mostly far
    shorter than 77 tokens. The eager model does this internally; the exported graph takes what it gets.
    """
    arr = ids.numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    is_eot = arr == eot_id
    if arr.size == 0 or not is_eot.any(axis=1).all():
        return ids  # a row without end-of-text: leave the input alone (the graph pools position 0 then)
    n = int(is_eot.argmax(axis=1).max()) + 1
    return ids[:, :n]


class OnnxTower:
    """An ONNX Runtime session for one exported tower, on CPU."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        arr = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        return self.session.run(None, {self.input: arr})[0]


def check_onnx(model: CLIP, paths: dict[str, Path], *, batch_sizes: Sequence[int] = (1, 3, 8),
               normalize: bool = False, text_ids: torch.Tensor | None = None) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| per tower over several batch sizes (the dynamic axis really varies).

    The PyTorch side is the eager ``encode_image``/``encode_text`` (not the export wrapper), so the check
    covers the text tower's export-specific forward too. ``text_ids``: real tokenized texts to use.
    """
    model = _cpu_fp32(model)
    diffs: dict[str, float] = {}
    for tower, path in paths.items():
        sess = OnnxTower(path)
        worst = 0.0
        for b in batch_sizes:
            if tower == "image":
                x = _example(model, "image", b)
            else:
                x = text_ids if text_ids is not None else example_ids(model, [(5 * i + 2) % 70 for i in range(b)])
            with torch.no_grad():
                ref = (model.encode_image(x, normalize) if tower == "image" else model.encode_text(x, normalize)).numpy()
            inputs = [x] if tower == "image" else [x, trim_ids(x, model.config.text.eot_id)]
            for inp in inputs:  # text: the full context and the trimmed batch (dynamic sequence axis)
                got = sess(inp)
                if got.shape != ref.shape:
                    raise AssertionError(f"{tower}: ONNX output {got.shape} vs PyTorch {ref.shape}")
                worst = max(worst, float(np.abs(got - ref).max()))
            if tower == "text" and text_ids is not None:
                break
        diffs[tower] = worst
    return diffs


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Dynamic int8 quantization of an exported tower (weights int8, activations quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    pre = dst.with_name(dst.stem + ".pre.onnx")
    try:
        # Shape inference + graph optimization first, as ONNX Runtime recommends: quantization then sees
        # fused MatMul/Gemm nodes with known shapes.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        source = pre
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; plain quantization still works
        source = src
    quantize_dynamic(str(source), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    pre.unlink(missing_ok=True)
    return dst
