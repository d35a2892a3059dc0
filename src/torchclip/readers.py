"""Checkpoint readers: one per source, each *detect -> read -> convert* to torchclip's layout and config.

| reader | recognised by | read with |
| --- | --- | --- |
| torchclip | ``.safetensors`` with ``torchclip_config`` metadata; a folder with ``torchclip.json`` or such a ``model.safetensors`` (``torchclip train``'s run folder) | safetensors |
| OpenCLIP hub folder | ``open_clip_config.json`` + ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` | safetensors / weights-only ``torch.load`` |
| HF ``CLIPModel`` folder | ``config.json`` with ``model_type: clip`` + ``model.safetensors`` / ``pytorch_model.bin`` | same |
| OpenAI TorchScript archive | zip with ``<name>/data.pkl`` and ``<name>/code/`` | ``torchscript.py`` (no code executed) |
| OpenCLIP training checkpoint | ``torch.save`` dict with ``state_dict`` (``module.`` prefix stripped) and ``name`` | weights-only ``torch.load`` |
| state dict | any other ``torch.save`` file, or a ``.safetensors`` file in OpenAI's layout | same / safetensors |

Every reader checks before it allocates: the file is a regular file, a zip's member count and compression
ratios are bounded, a tensor must fit inside the storage it views, and a config must lie in sane ranges
and match the tensors the file holds. Whatever goes wrong is one ``CheckpointError`` naming the file.

Where a format records the MLP activation (torchclip, OpenCLIP and HF configs, the module classes of a
TorchScript archive, the architecture name of an OpenCLIP training checkpoint) it is taken from there; a
plain state dict cannot tell GELU from QuickGELU, so it needs ``activation=`` (or an architecture name,
see ``torchclip.create_model``), else QuickGELU is assumed with a warning that names the choice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import CLIPConfig, HFTextConfig, PreprocessConfig, TextConfig, canonical_name, from_open_clip
from .formats import (
    OPENAI_NON_WEIGHT_KEYS,
    CheckpointError,
    check_config_bounds,
    hf_config_to_torchclip,
    hf_preprocess_config,
    hf_to_openai,
    infer_openai_config,
    logit_bias_of,
    open_clip_preprocess_config,
    openai_to_torchclip,
)
from .jsonfile import JSONFileError, read_json_object

__all__ = ["LoadedCheckpoint", "read_checkpoint", "find_vocabulary", "open_zip", "READERS", "TOKENIZER_FILES", "ArchitectureGuessWarning"]

# Bounds that no real checkpoint comes near; beyond them a file is hostile or broken.
MAX_ZIP_MEMBERS = 100_000
MAX_COMPRESSION_RATIO = 50  # torch.save stores members uncompressed, and weights barely deflate
MAX_METADATA_BYTES = 64 << 20  # a config or vocabulary embedded in metadata or a JSON file

# Vocabulary files that travel with a model, in the order they are looked for.
TOKENIZER_FILES = ("tokenizer.txt.gz", "tokenizer.txt", "merges.txt.gz", "bpe.txt.gz", "vocab.txt.gz", "vocab.txt",
                   "bpe_vocab.txt.gz")


class ArchitectureGuessWarning(UserWarning):
    """A checkpoint that cannot record its activation (or head widths) was read by assumption."""


@dataclass
class LoadedCheckpoint:
    config: CLIPConfig
    state_dict: dict[str, torch.Tensor]  # torchclip names, fp16/bf16 upcast to fp32
    format: str  # "torchclip", "openai-torchscript", "openai", "open_clip", "open_clip-hub", "hf"
    path: Path
    preprocess: PreprocessConfig | None = None  # None: OpenAI's for the config's image size
    tokenizer: Any = None  # a bundled vocabulary: a Tokenizer, or None for OpenAI's


# ---------------------------------------------------------------- bounded primitives

def _regular_file(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from e
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file (a device, pipe or socket is never read as a checkpoint)")


def _read_json(path: Path) -> dict[str, Any]:
    _regular_file(path)
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too large for a config file")
    try:
        return read_json_object(path)
    except JSONFileError as e:
        raise CheckpointError(f"{path}: {e}") from e


def open_zip(path: Path) -> zipfile.ZipFile | None:
    """The checked zip archive at ``path``, or None if it is not a zip. Raises on hostile archives."""
    _regular_file(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated zip archive ({e})") from e
    try:
        infos = zf.infolist()
        if len(infos) > MAX_ZIP_MEMBERS:
            raise CheckpointError(f"{path}: {len(infos)} archive members is more than a checkpoint holds "
                                  f"(at most {MAX_ZIP_MEMBERS})")
        size = path.stat().st_size
        for info in infos:
            if info.compress_type == zipfile.ZIP_STORED:
                if info.file_size > size:
                    raise CheckpointError(f"{path}: member {info.filename!r} claims {info.file_size} bytes, "
                                          f"more than the file's {size}")
            elif info.file_size > MAX_COMPRESSION_RATIO * info.compress_size + (1 << 20):
                raise CheckpointError(
                    f"{path}: member {info.filename!r} inflates {info.compress_size} bytes to {info.file_size} "
                    f"(a compression bomb; checkpoints store tensors uncompressed)")
    except BaseException:
        zf.close()
        raise
    return zf


def _check_tensors(sd: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """Keep the tensors; refuse any that views more elements than its storage holds (an expanded view)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        if v.is_sparse or v.layout != torch.strided:
            raise CheckpointError(f"{where}: tensor {k!r} has layout {v.layout}; checkpoints hold dense tensors")
        need = v.numel() * v.element_size()
        have = v.untyped_storage().nbytes() - v.storage_offset() * v.element_size()
        if need > have or min(v.stride(), default=1) < 0:
            raise CheckpointError(
                f"{where}: tensor {k!r} of shape {list(v.shape)} views {need} bytes of a {have}-byte storage "
                "(an expanded or overlapping view: refused before anything is allocated for it)")
        out[k] = v
    return out


def _upcast(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in sd.items()}


def _fix_logit_scale(sd: dict[str, torch.Tensor]) -> None:
    # Some files store logit_scale as [1] (openai/CLIP#66); the model's parameter is 0-dim.
    for key in ("logit_scale", "logit_bias"):
        if key in sd and sd[key].shape == (1,):
            sd[key] = sd[key].reshape(())


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a checked zip archive; the legacy tar/pickle format is refused
    (its storages are allocated at the sizes the file claims before any byte is read)."""
    zf = open_zip(path)
    if zf is None:
        raise CheckpointError(f"{path}: not a zip-format PyTorch file (truncated, corrupt, or the legacy pre-1.6 "
                              "format, which is not read: re-save it with a current torch.save)")
    zf.close()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint: truncated or corrupt ({e})") from e
    except Exception as e:  # pickle.UnpicklingError and friends: a file weights_only refuses
        raise CheckpointError(f"{path}: refused by the weights-only loader (not a plain tensor file): {e}") from e


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a safetensors file, from its header alone; None if the file is not one."""
    _regular_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            n = int.from_bytes(head, "little")
            if n <= 1 or n > MAX_METADATA_BYTES + (100 << 20) or n > path.stat().st_size - 8:
                return None
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _regular_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: truncated or corrupt ({e})") from e


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a ``.safetensors`` or ``torch.save`` file, tensors checked."""
    sd = _read_safetensors(path) if path.suffix == ".safetensors" else _torch_load(path)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(sd).__name__}")
    return _check_tensors(sd, str(path))


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _parse_config(make: Callable[[], CLIPConfig], where: str) -> CLIPConfig:
    """Build a config from foreign data: any malformed value is a ``CheckpointError`` naming ``where``."""
    try:
        config = make()
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, ZeroDivisionError, AttributeError, OverflowError) as e:
        raise CheckpointError(f"{where}: malformed model config ({type(e).__name__}: {e})") from e
    check_config_bounds(config, where)
    return config


# ---------------------------------------------------------------- activation: recorded, asked for, or assumed

def _activation(recorded: str | None, asked: str | None, where: str, what: str) -> str:
    if recorded is not None:
        if asked is not None and asked != recorded:
            raise CheckpointError(f"{where}: the file records activation {recorded!r}, but {asked!r} was asked for")
        return recorded
    if asked is not None:
        return asked
    warnings.warn(
        f"{where}: {what} does not record its MLP activation; assuming QuickGELU (OpenAI's). For a GELU model "
        "(OpenCLIP's ViT-B-32, LAION/DataComp weights) pass activation='gelu' or name the architecture: "
        "torchclip.create_model('ViT-B-32', pretrained=path)", ArchitectureGuessWarning, stacklevel=4)
    return "quick_gelu"


def _known_heads(inferred: CLIPConfig, where: str) -> CLIPConfig:
    """Shapes cannot tell head widths. A known architecture with these shapes (ViT-H/14's 80-wide heads,
    say) decides them; with none, OpenAI's 64-wide heads are assumed, with a warning."""
    from .config import PRESETS
    from .formats import shape_signature

    signature = shape_signature(inferred)
    heads = {(p.vision.head_width, p.text.heads, p.vision.mlp_ratio, p.text.mlp_ratio)
             for p in PRESETS.values() if shape_signature(p) == signature}
    if len(heads) == 1:
        hw, th, vr, tr = heads.pop()
        return inferred.replace(vision=dataclasses.replace(inferred.vision, head_width=hw, mlp_ratio=vr),
                                text=dataclasses.replace(inferred.text, heads=th, mlp_ratio=tr))
    if len(heads) != 1:
        known = "match several known architectures" if heads else "are no known architecture's"
        warnings.warn(f"{where}: a state dict does not record its attention heads, and its shapes {known}: "
                      "assuming OpenAI's 64-wide heads; name the architecture "
                      "(torchclip.create_model(config, pretrained=path)) if they differ", ArchitectureGuessWarning,
                      stacklevel=5)
    return inferred


def _from_openai_layout(sd: dict[str, Any], path: Path, fmt: str, activation: str,
                        config: CLIPConfig | None = None) -> LoadedCheckpoint:
    """OpenAI's key layout -> torchclip's; the architecture is ``config`` when one is declared (its head
    widths cannot be read from shapes), else inferred from the shapes with OpenAI's 64-wide heads."""
    where = str(path)
    sd = {k: v for k, v in sd.items() if k.rsplit(".", 1)[-1] not in OPENAI_NON_WEIGHT_KEYS}
    sd = _upcast(_check_tensors(sd, where))
    _fix_logit_scale(sd)
    if config is None:
        config = _parse_config(lambda: infer_openai_config(sd, where, activation=activation), where)
        config = _known_heads(config, where)
    else:  # the architecture named; whether the file carries a sigmoid-loss bias, the file says
        config = config.replace(activation=activation, init_logit_bias=logit_bias_of(sd))
    return LoadedCheckpoint(config, openai_to_torchclip(sd, where), fmt, path)


# ---------------------------------------------------------------- vocabulary bundled with the weights

def find_vocabulary(checkpoint: str | os.PathLike[str]) -> Path | None:
    """The vocabulary stored with a checkpoint, else None (OpenAI's): an HF ``vocab.json`` + ``merges.txt``
    folder or a merges file (``TOKENIZER_FILES``), in the checkpoint's folder (or a ``tokenizer/`` inside
    it), or in the run folder above ``checkpoints/`` (``torchclip train``'s layout)."""
    for f in _vocabulary_folders(checkpoint):
        for d in (f, f / "tokenizer"):
            if (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
                return d
        found = _first_file(f, TOKENIZER_FILES)
        if found is not None:
            return found
    return None


def _vocabulary_folders(checkpoint: str | os.PathLike[str]) -> list[Path]:
    """Where a checkpoint's vocabulary may sit: its own folder, and the run folder above ``checkpoints/``."""
    p = Path(checkpoint)
    folder = p if p.is_dir() else p.parent
    return [folder] + ([folder.parent] if folder.name == "checkpoints" else [])


def _bundled_tokenizer(checkpoint: Path, text: TextConfig | HFTextConfig) -> Any:
    """The vocabulary stored with a checkpoint, for its text tower: a BPE merges file or HF ``vocab.json`` +
    ``merges.txt`` for CLIP's tower, a ``tokenizer.json`` for a pretrained-LM tower; None when there is none."""
    from .tokenizer import Tokenizer

    ctx = text.context_length
    if isinstance(text, HFTextConfig):
        from .hf_text import HFTokenizer

        for f in _vocabulary_folders(checkpoint):
            for d in (f, f / "tokenizer"):
                if (d / "tokenizer.json").is_file():
                    return HFTokenizer.from_folder(d, context_length=ctx)
        return None
    found = find_vocabulary(checkpoint)
    if found is None:
        return None
    if found.is_dir():
        return Tokenizer.from_hf(found / "vocab.json", found / "merges.txt", context_length=ctx)
    return Tokenizer.from_file(found, context_length=ctx)


def _tokenizer_from_metadata(meta: dict[str, str], context_length: int, where: str) -> Any:
    from .tokenizer import Tokenizer

    try:
        if "torchclip_tokenizer_hf" in meta:
            from .hf_text import HFTokenizer

            return HFTokenizer.from_json(meta["torchclip_tokenizer_hf"], context_length)
        text = meta.get("torchclip_tokenizer_merges")
        if text is None:
            return None
        merges = [tuple(ln.split(" ")) for ln in text.split("\n")[1:] if ln]
        return Tokenizer(merges, context_length=context_length)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{where}: the embedded vocabulary is malformed ({e})") from e


# ---------------------------------------------------------------- the readers

class Reader:
    """One source: ``detect`` is cheap and never allocates by a file's claims; ``bundle`` reads what travels
    with the weights (config, preprocessing, vocabulary); ``read`` adds the weights, converted."""

    format = ""

    def detect(self, path: Path) -> bool:
        raise NotImplementedError

    def bundle(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        """Everything but the weights (``state_dict`` empty); formats without a separate header read it all."""
        loaded = self.read(path, activation, config)
        loaded.state_dict = {}
        return loaded

    def read(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        raise NotImplementedError


class TorchclipReader(Reader):
    """torchclip's own files: config (and a custom vocabulary) in the safetensors metadata, or a folder."""

    format = "torchclip"

    @staticmethod
    def _weights(path: Path) -> Path | None:
        if path.is_dir():
            path = path / "model.safetensors"
        if path.suffix != ".safetensors" or not path.is_file():
            return None
        meta = _safetensors_metadata(path)
        return path if meta is not None and "torchclip_config" in meta else None

    def detect(self, path: Path) -> bool:
        return (path.is_dir() and (path / "torchclip.json").is_file()) or self._weights(path) is not None

    def bundle(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        weights = self._weights(path)
        if weights is None:
            raise CheckpointError(f"{path}: torchclip folder has no model.safetensors with its config")
        meta = _safetensors_metadata(weights) or {}
        where = str(weights)

        def make() -> CLIPConfig:
            return CLIPConfig.from_dict(json.loads(meta["torchclip_config"]))

        try:
            config = _parse_config(make, where)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{where}: the config in the metadata is not valid JSON ({e})") from e
        _activation(config.activation, activation, where, "")
        preprocess = None
        if "torchclip_preprocess" in meta:
            try:
                preprocess = PreprocessConfig.from_dict(json.loads(meta["torchclip_preprocess"]))
            except (ValueError, TypeError) as e:
                raise CheckpointError(f"{where}: malformed preprocessing config ({e})") from e
        ctx = config.text.context_length
        tokenizer = _tokenizer_from_metadata(meta, ctx, where)
        if tokenizer is None:
            tokenizer = _bundled_tokenizer(weights, config.text)
        return LoadedCheckpoint(config, {}, self.format, path, preprocess, tokenizer)

    def read(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        loaded = self.bundle(path, activation, config)
        weights = self._weights(path)
        assert weights is not None  # bundle() checked
        loaded.state_dict = _upcast(_check_tensors(_read_safetensors(weights), str(weights)))
        return loaded


class _FolderReader(Reader):
    """A folder whose config files ``bundle`` reads, with its weights in the first of ``weights`` it holds."""

    label = ""  # the folder's kind, for errors
    weights: tuple[str, ...] = ()

    def read(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        loaded = self.bundle(path, activation, config)
        weights = _first_file(path, self.weights)
        if weights is None:
            raise CheckpointError(f"{path}: {self.label} folder has none of {', '.join(self.weights)}")
        loaded.state_dict = self._convert(_read_weights(weights), weights, loaded.config)
        return loaded

    def _convert(self, sd: dict[str, torch.Tensor], weights: Path, config: CLIPConfig) -> dict[str, torch.Tensor]:
        """The folder's state dict in torchclip's names."""
        raise NotImplementedError


class OpenCLIPHubReader(_FolderReader):
    """OpenCLIP's hub layout: ``open_clip_config.json`` ({model_cfg, preprocess_cfg}) + weights."""

    format = "open_clip-hub"
    label = "OpenCLIP"
    weights = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "open_clip_config.json").is_file()

    def bundle(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        cfg_file = path / "open_clip_config.json"
        doc = _read_json(cfg_file)
        where = str(cfg_file)
        model_cfg = doc.get("model_cfg")
        if not isinstance(model_cfg, dict):
            raise CheckpointError(f"{where}: no 'model_cfg' object")
        config = _parse_config(lambda: from_open_clip(model_cfg, where).replace(source=""), where)
        _activation(config.activation, activation, where, "")
        pp = doc.get("preprocess_cfg") or {}
        try:
            preprocess = open_clip_preprocess_config(pp, config.vision.image_size)
        except (ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{where}: malformed preprocess_cfg ({e})") from e
        tokenizer = _bundled_tokenizer(path, config.text)
        return LoadedCheckpoint(config, {}, self.format, path, preprocess, tokenizer)

    def _convert(self, sd: dict[str, torch.Tensor], weights: Path, config: CLIPConfig) -> dict[str, torch.Tensor]:
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        return _from_openai_layout(sd, weights, self.format, config.activation, config).state_dict


class HFReader(_FolderReader):
    """HF transformers ``CLIPModel`` folders (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``)."""

    format = "hf"
    label = "HF"
    weights = ("model.safetensors", "pytorch_model.bin")

    def detect(self, path: Path) -> bool:
        if not (path.is_dir() and (path / "config.json").is_file()):
            return False
        try:
            return _read_json(path / "config.json").get("model_type") == "clip"
        except CheckpointError:
            return True  # bundle() names the problem

    def bundle(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        cfg_file = path / "config.json"
        cfg = _read_json(cfg_file)
        config = _parse_config(lambda: hf_config_to_torchclip(cfg, str(cfg_file)), str(cfg_file))
        _activation(config.activation, activation, str(cfg_file), "")
        preprocess = None
        pp_file = path / "preprocessor_config.json"
        if pp_file.is_file():
            try:
                preprocess = hf_preprocess_config(_read_json(pp_file), config.vision.image_size)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{pp_file}: malformed image processor config ({e})") from e
        tokenizer = _bundled_tokenizer(path, config.text)
        return LoadedCheckpoint(config, {}, self.format, path, preprocess, tokenizer)

    def _convert(self, sd: dict[str, torch.Tensor], weights: Path, config: CLIPConfig) -> dict[str, torch.Tensor]:
        return openai_to_torchclip(hf_to_openai(_upcast(sd), str(weights)), str(weights))


class TorchScriptReader(Reader):
    """OpenAI's released ``.pt`` files, replayed without executing their code (``torchscript.py``)."""

    format = "openai-torchscript"

    def detect(self, path: Path) -> bool:
        if not path.is_file():
            return False
        from .torchscript import is_torchscript_archive

        zf = open_zip(path)
        if zf is None:
            return False
        with zf:
            return is_torchscript_archive(zf)

    def read(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        from .torchscript import activation_of_archive, read_torchscript

        tensors, classes = read_torchscript(path)
        act = _activation(activation_of_archive(classes), activation, str(path), "this TorchScript archive")
        return _from_openai_layout(tensors, path, self.format, act, config)


class TorchFileReader(Reader):
    """``torch.save`` files: OpenCLIP training checkpoints, torchclip training checkpoints, state dicts."""

    format = "openai"

    def detect(self, path: Path) -> bool:
        return path.is_file()

    def read(self, path: Path, activation: str | None, config: CLIPConfig | None) -> LoadedCheckpoint:
        if path.suffix == ".safetensors":
            sd = _read_weights(path)
            if any(k.startswith("text_model.") for k in sd):
                raise CheckpointError(f"{path}: HF weights need their config.json: load the folder instead")
            act = _activation(None, activation, str(path), "a state dict")
            return _from_openai_layout(sd, path, "open_clip", act, config)
        obj = _torch_load(path)
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
        if isinstance(obj.get("state_dict"), dict):  # OpenCLIP's epoch_N.pt
            sd = obj["state_dict"]
            if next(iter(sd), "").startswith("module."):
                sd = {k.removeprefix("module."): v for k, v in sd.items()}
            named = config or _open_clip_name_config(obj.get("name"))
            act = _activation(None if named is None else named.activation, activation, str(path),
                              "an OpenCLIP checkpoint without a known architecture name")
            return _from_openai_layout(sd, path, "open_clip", act, named)
        if "torchclip_config" in obj and isinstance(obj.get("model"), dict):  # torchclip's training checkpoints
            where = str(path)
            config = _parse_config(lambda: CLIPConfig.from_dict(obj["torchclip_config"]), where)
            _activation(config.activation, activation, where, "")
            tokenizer = _bundled_tokenizer(path, config.text)
            return LoadedCheckpoint(config, _upcast(_check_tensors(obj["model"], where)), "torchclip", path,
                                    None, tokenizer)
        act = _activation(None, activation, str(path), "a state dict")
        return _from_openai_layout(obj, path, "openai", act, config)


def _open_clip_name_config(name: Any) -> CLIPConfig | None:
    """The architecture an OpenCLIP training checkpoint's ``name`` means there (``ViT-B-32`` is GELU,
    ``ViT-B-32-quickgelu`` QuickGELU), or None for a name torchclip does not know."""
    if not isinstance(name, str) or canonical_name(name) is None:
        return None
    from .config import get_preset

    return get_preset(name)


def _architecture(config: CLIPConfig) -> CLIPConfig:
    """What makes two configs the same network: not where they come from, nor the initial temperature."""
    return config.replace(source="", init_logit_scale=0.0, init_logit_bias=None,
                          vision=dataclasses.replace(config.vision, patch_dropout=0.0))


# Folder readers first (a folder can hold a config.json that is not HF's), then files by content.
READERS: tuple[Reader, ...] = (TorchclipReader(), OpenCLIPHubReader(), HFReader(), TorchScriptReader(),
                               TorchFileReader())


def read_checkpoint(path: str | os.PathLike[str], activation: str | None = None,
                    config: CLIPConfig | None = None, *, weights: bool = True) -> LoadedCheckpoint:
    """Detect the source of ``path`` (file or folder) and return torchclip's config and state dict.

    ``activation`` ("quick_gelu" or "gelu") is knowledge a plain state dict cannot record. ``config``, the
    architecture the caller expects (``create_model(name, pretrained=path)``), supplies what shapes cannot
    tell (activation, head widths) to formats that do not record it, and must equal what the others record.
    ``weights=False`` reads only what travels with the weights (config, preprocessing, vocabulary) where the
    format keeps it apart from them.
    """
    if activation is not None and activation not in ("quick_gelu", "gelu"):
        raise ValueError(f"activation must be 'quick_gelu' or 'gelu', got {activation!r}")
    if config is not None:
        activation = activation or config.activation
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not path.is_dir():
        _regular_file(path)
    for reader in READERS:
        if reader.detect(path):
            loaded = (reader.read if weights else reader.bundle)(path, activation, config)
            if config is not None and _architecture(loaded.config) != _architecture(config.replace(
                    activation=loaded.config.activation)):
                raise CheckpointError(f"{path} holds a different architecture than the one asked for: "
                                      f"{loaded.config} vs {config}")
            return loaded
    if path.is_dir():
        raise CheckpointError(f"{path}: folder holds no checkpoint torchclip reads (torchclip.json or "
                              "model.safetensors, open_clip_config.json, or an HF CLIP config.json)")
    raise CheckpointError(f"{path}: not a checkpoint torchclip reads")

