"""A pretrained transformers encoder as the text tower (LiT, Zhai et al. 2022): pooled and projected.

The encoder's maths is transformers' own (``AutoModel`` from the config the model records); this module adds
the pooling and the projection into CLIP's embedding space. Needs the ``lit`` extra (``transformers``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..config import CLIPConfig, HFTextConfig

__all__ = ["HFTextTower"]


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("a pretrained language model as the text tower needs transformers: "
                          "pip install 'torchclip[lit]'") from e


class HFTextTower(nn.Module):
    """A transformers encoder, pooled and projected into CLIP's embedding space.

    The encoder is built from the config alone (weights come from the checkpoint or
    ``load_encoder_weights``); its non-persistent buffers are real even when the CLIP around it is built
    on the meta device, since no state dict would fill them.
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        _require_transformers()
        from transformers import AutoConfig, AutoModel

        t = config.text
        if not isinstance(t, HFTextConfig):
            raise TypeError(f"HFTextTower needs an HFTextConfig, got {type(t).__name__}")
        enc = dict(t.encoder_config)
        hf_config = AutoConfig.for_model(enc.pop("model_type"), **enc)
        with torch.device("cpu"):
            try:
                self.encoder = AutoModel.from_config(hf_config, add_pooling_layer=False)
            except TypeError:  # models without a pooler take no such argument
                self.encoder = AutoModel.from_config(hf_config)
        self.context_length, self.vocab_size = t.context_length, t.vocab_size
        self.pad_id, self.eot_id, self.pooling = t.pad_id, t.eot_id, t.pooling
        w, e = t.width, config.embed_dim
        if t.proj == "none":  # the encoder's own space (CLIPConfig checked e == w)
            self.proj: nn.Module = nn.Identity()
        elif t.proj == "linear":
            self.proj = nn.Linear(w, e, bias=False)
        else:
            self.proj = nn.Sequential(nn.Linear(w, (w + e) // 2, bias=False), nn.GELU(), nn.Linear((w + e) // 2, e, bias=False))
        for m in self.proj.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=m.in_features**-0.5)

    def load_encoder_weights(self, source: str | os.PathLike[str]) -> None:
        """The pretrained encoder's weights from a transformers folder (or hub id), strictly."""
        from transformers import AutoModel

        pretrained = AutoModel.from_pretrained(source)
        missing, unexpected = self.encoder.load_state_dict(pretrained.state_dict(), strict=False)
        unexpected = [k for k in unexpected if not k.startswith("pooler.")]  # the pooler is not used
        if missing or unexpected:
            raise ValueError(f"{source}: encoder weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            self.encoder.gradient_checkpointing_enable()
        else:
            self.encoder.gradient_checkpointing_disable()

    def forward(self, ids: torch.Tensor, projected: bool = True) -> torch.Tensor:
        """[B, L <= context] token ids -> [B, E] features ([B, W] pooled, before the projection)."""
        if ids.dim() != 2:
            raise ValueError(f"token ids must be [batch, length], got shape {tuple(ids.shape)}")
        if ids.shape[1] > self.context_length:
            raise ValueError(f"token ids have length {ids.shape[1]} > context length {self.context_length}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids outside [0, {self.vocab_size}): was the text tokenized with this model's "
                             "tokenizer?")
        real = ids != self.pad_id  # [B, L]
        if ids.shape[0] and not torch.jit.is_tracing():  # padding after every row's last token changes nothing
            last = int((real * torch.arange(1, ids.shape[1] + 1, device=ids.device)).max())
            ids, real = ids[:, :max(1, last)], real[:, :max(1, last)]
        h = self.encoder(input_ids=ids, attention_mask=real.long()).last_hidden_state  # [B, L, W]
        if self.pooling == "cls":
            x = h[:, 0]
        elif self.pooling == "mean":
            m = real.unsqueeze(-1).to(h.dtype)  # [B, L, 1]
            x = (h * m).sum(1) / m.sum(1).clamp_min(1)
        else:
            x = h[torch.arange(h.shape[0], device=h.device), (ids == self.eot_id).int().argmax(1)]
        return self.proj(x) if projected else x  # [B, E] or [B, W]
