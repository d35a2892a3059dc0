"""The pretrained zoo: every OpenCLIP (architecture, tag) pair whose architecture is CLIP's, as data.

Each :class:`Pretrained` entry holds what loading the weights right needs: where the file lives (a URL with its
published SHA-256 or its first hex digits, and/or an HF hub repo holding OpenCLIP's files), the activation the
weights were trained with, and the preprocessing they expect (mean/std, interpolation, resize mode; the image size
comes from the architecture). The facts come from open_clip's ``pretrained.py`` and ``model_configs/``; the block
between the ``generated`` markers is written by ``tools/gen_zoo.py`` and checked against open_clip by
``tests/test_zoo.py``.

Names follow OpenCLIP: ``ViT-B-32`` is its GELU architecture, ``ViT-B-32-quickgelu`` the QuickGELU twin.
A tag's activation wins over the name's: OpenCLIP lists ``("ViT-B-32", "openai")`` with ``quick_gelu=True``
because OpenAI trained with QuickGELU, so the entry builds QuickGELU (open_clip itself builds the name's GELU
and only warns). OpenAI's spellings (``ViT-B/32``, ``ViT-L/14@336px``) look up the ``-quickgelu`` twin's tags.

URL files land in :func:`torchclip.download.cache_dir` under their own file names (OpenAI's ``ViT-B-32.pt`` etc.,
so ``TORCHCLIP_CACHE=~/.cache/clip`` reuses files the ``clip`` package downloaded); hub files go through
``huggingface_hub`` and its cache (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, revisions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import (
    OPENAI_MEAN,
    OPENAI_MODELS,
    OPENAI_STD,
    OPENAI_TWINS,
    CLIPConfig,
    PreprocessConfig,
    canonical_name,
    get_preset,
)
from .download import download

__all__ = [
    "Pretrained",
    "EXCLUDED",
    "EXCLUSION_REASONS",
    "HUB_FILES",
    "get_pretrained",
    "list_pretrained",
    "list_pretrained_tags",
    "openai_pretrained",
    "pretrained_url",
    "download_pretrained",
]

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
QUICK, GELU = "quick_gelu", "gelu"
# OpenCLIP's files in a hub repo, in the order it tries them (safetensors first).
HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class Pretrained:
    """One pretrained checkpoint of the zoo and the preprocessing its weights expect."""

    arch: str  # OpenCLIP's architecture name, a key of torchclip.config.PRESETS
    tag: str
    activation: str  # the activation the weights were trained with
    url: str | None = None
    sha256: str | None = None  # the full hex digest, or the leading hex digits a release file name publishes
    hf_hub: str | None = None  # HF repo id holding OpenCLIP's files (HUB_FILES)
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # OpenCLIP's eval resize: shortest (OpenAI's), longest or squash

    @property
    def name(self) -> str:
        return f"{self.arch}:{self.tag}"

    @property
    def config(self) -> CLIPConfig:
        """The architecture with the activation these weights need."""
        return get_preset(self.arch).replace(activation=self.activation)

    @property
    def image_size(self) -> int:
        return get_preset(self.arch).vision.image_size

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing these weights were trained with."""
        return PreprocessConfig(self.image_size, mean=self.mean, std=self.std, interpolation=self.interpolation,
                                resize_mode=self.resize_mode)

    @property
    def source(self) -> str:
        """Where :meth:`download` fetches from by default: a checksummed URL, else the hub."""
        if self.url and (self.sha256 or not self.hf_hub):
            return "url"
        return "hf-hub"

    def download(self, *, source: str | None = None, revision: str | None = None, progress: bool = True,
                 cache: Path | None = None) -> Path:
        """Local path of the checkpoint file, fetched (and verified, for URLs) if it is not cached yet.

        ``source`` picks ``"url"`` or ``"hf-hub"`` when the entry has both; ``revision`` is a hub branch, tag
        or commit; ``cache`` overrides the URL cache directory. Hub files use the hub's own cache and progress
        bars (``HF_HUB_DISABLE_PROGRESS_BARS``).
        """
        source = source or self.source
        if source == "url":
            if not self.url:
                raise ValueError(f"{self.name} has no direct URL; use source='hf-hub' ({self.hf_hub})")
            return download(self.url, self.sha256, _url_filename(self.url), progress=progress, cache=cache)
        if source == "hf-hub":
            if not self.hf_hub:
                raise ValueError(f"{self.name} is not on the HF hub; use source='url' ({self.url})")
            return _hub_download(self.hf_hub, revision=revision)
        raise ValueError(f"source must be 'url' or 'hf-hub', got {source!r}")


def _url_filename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _hub_download(repo_id: str, *, revision: str | None) -> Path:
    """OpenCLIP's weights file of a hub repo: the safetensors file if the repo has one, else the pickle."""
    from .hub import first_hub_file

    return first_hub_file(repo_id, HUB_FILES, revision)


def _e(arch: str, tag: str, activation: str, *, url: str | None = None, sha256: str | None = None,
       hub: str | None = None, norm: str = "openai", interpolation: str = "bicubic",
       resize_mode: str = "shortest") -> Pretrained:
    mean, std = {"openai": (OPENAI_MEAN, OPENAI_STD), "inception": (INCEPTION_MEAN, INCEPTION_STD)}[norm]
    return Pretrained(arch, tag, activation, url, sha256, hub, mean, std, interpolation, resize_mode)


# Why an OpenCLIP architecture with pretrained weights is not in the zoo (keys of EXCLUDED's values).
EXCLUSION_REASONS: dict[str, str] = {
    "coca": "CoCa: an attentional pooler over the image tokens and a multimodal text decoder for captioning; "
            "torchclip has neither.",
    "siglip": "SigLIP/SigLIP2: a timm ViT with a MAP (attention-pool latent) head and no class token or ln_pre; "
              "a bidirectional text transformer (no causal mask) pooling the last token, LayerNorm eps 1e-6, a "
              "projection with bias, tanh-approximated GELU (SigLIP2); SentencePiece/Gemma tokenizers "
              "(32k-256k ids, 64-token context); a learned logit bias for the sigmoid loss; squash resize with "
              "mean/std 0.5. torchclip would need a MAP pooling head, a non-causal last-token text pooler, "
              "bias/eps/GELU-tanh knobs, an HF tokenizer path and a big_vision/timm key converter.",
    "hf-text-tower": "the text tower is a HuggingFace transformer (RoBERTa, XLM-RoBERTa, NLLB) with its own "
                     "tokenizer and pooler, not CLIP's causal text transformer.",
    "timm-image-tower": "the image tower is a timm model (EVA, ConvNeXt, ViTamin, MobileCLIP's MCi/FastViT, "
                        "Perception Encoder), not CLIP's ViT or ModifiedResNet.",
    "clipa": "CLIPA: a ViT without ln_pre that mean-pools its tokens with the final LayerNorm after pooling, and "
             "a bidirectional BERT-tokenized text tower pooling the last token.",
    "foreign-tokenizer": "MetaCLIP 2 (worldwide): CLIP's towers, but a multilingual HF tokenizer "
                         "(facebook/xlm-v-base, 901,629 ids) and pooling at the first id 2; torchclip ships only "
                         "CLIP's BPE. The towers fit TextConfig(vocab_size=901629, eot_id=2); the tokenizer is "
                         "what is missing.",
}

# ---- generated by tools/gen_zoo.py from open_clip's pretrained.py and model_configs; do not edit by hand ----
# open_clip 3.3.0: 96 pairs included, 100 excluded (88 architectures).
_ZOO: tuple[Pretrained, ...] = (
    _e('RN50', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt', sha256='afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762', hub='timm/resnet50_clip.openai'),
    _e('RN50', 'yfcc15m', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn50-quickgelu-yfcc15m-455df137.pt', sha256='455df137', hub='timm/resnet50_clip.yfcc15m'),
    _e('RN50', 'cc12m', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn50-quickgelu-cc12m-f000538c.pt', sha256='f000538c', hub='timm/resnet50_clip.cc12m'),
    _e('RN101', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt', sha256='8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599', hub='timm/resnet101_clip.openai'),
    _e('RN101', 'yfcc15m', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn101-quickgelu-yfcc15m-3e04b30e.pt', sha256='3e04b30e', hub='timm/resnet101_clip.yfcc15m'),
    _e('RN50x4', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt', sha256='7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd', hub='timm/resnet50x4_clip.openai'),
    _e('RN50x16', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt', sha256='52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa', hub='timm/resnet50x16_clip.openai'),
    _e('RN50x64', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt', sha256='be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c', hub='timm/resnet50x64_clip.openai'),
    _e('ViT-B-32', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt', sha256='40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af', hub='timm/vit_base_patch32_clip_224.openai'),
    _e('ViT-B-32', 'laion400m_e31', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-quickgelu-laion400m_e31-d867053b.pt', sha256='d867053b', hub='timm/vit_base_patch32_clip_224.laion400m_e31'),
    _e('ViT-B-32', 'laion400m_e32', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-quickgelu-laion400m_e32-46683a32.pt', sha256='46683a32', hub='timm/vit_base_patch32_clip_224.laion400m_e32'),
    _e('ViT-B-32', 'laion2b_e16', GELU, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-laion2b_e16-af8dbd0c.pth', sha256='af8dbd0c', hub='timm/vit_base_patch32_clip_224.laion2b_e16'),
    _e('ViT-B-32', 'laion2b_s34b_b79k', GELU, hub='laion/CLIP-ViT-B-32-laion2B-s34B-b79K'),
    _e('ViT-B-32', 'datacomp_xl_s13b_b90k', GELU, hub='laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K'),
    _e('ViT-B-32', 'datacomp_m_s128m_b4k', GELU, hub='laion/CLIP-ViT-B-32-DataComp.M-s128M-b4K'),
    _e('ViT-B-32', 'commonpool_m_clip_s128m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.M.clip-s128M-b4K'),
    _e('ViT-B-32', 'commonpool_m_laion_s128m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.M.laion-s128M-b4K'),
    _e('ViT-B-32', 'commonpool_m_image_s128m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.M.image-s128M-b4K'),
    _e('ViT-B-32', 'commonpool_m_text_s128m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.M.text-s128M-b4K'),
    _e('ViT-B-32', 'commonpool_m_basic_s128m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.M.basic-s128M-b4K'),
    _e('ViT-B-32', 'commonpool_m_s128m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.M-s128M-b4K'),
    _e('ViT-B-32', 'datacomp_s_s13m_b4k', GELU, hub='laion/CLIP-ViT-B-32-DataComp.S-s13M-b4K'),
    _e('ViT-B-32', 'commonpool_s_clip_s13m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.S.clip-s13M-b4K'),
    _e('ViT-B-32', 'commonpool_s_laion_s13m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.S.laion-s13M-b4K'),
    _e('ViT-B-32', 'commonpool_s_image_s13m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.S.image-s13M-b4K'),
    _e('ViT-B-32', 'commonpool_s_text_s13m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.S.text-s13M-b4K'),
    _e('ViT-B-32', 'commonpool_s_basic_s13m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.S.basic-s13M-b4K'),
    _e('ViT-B-32', 'commonpool_s_s13m_b4k', GELU, hub='laion/CLIP-ViT-B-32-CommonPool.S-s13M-b4K'),
    _e('ViT-B-32', 'metaclip_400m', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/b32_400m.pt', hub='timm/vit_base_patch32_clip_224.metaclip_400m'),
    _e('ViT-B-32', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/b32_fullcc2.5b.pt', hub='timm/vit_base_patch32_clip_224.metaclip_2pt5b'),
    _e('ViT-B-32-256', 'datacomp_s34b_b86k', GELU, hub='laion/CLIP-ViT-B-32-256x256-DataComp-s34B-b86K'),
    _e('ViT-B-16', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt', sha256='5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f', hub='timm/vit_base_patch16_clip_224.openai'),
    _e('ViT-B-16', 'laion400m_e31', GELU, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16-laion400m_e31-00efa78f.pt', sha256='00efa78f', hub='timm/vit_base_patch16_clip_224.laion400m_e31'),
    _e('ViT-B-16', 'laion400m_e32', GELU, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16-laion400m_e32-55e67d44.pt', sha256='55e67d44', hub='timm/vit_base_patch16_clip_224.laion400m_e32'),
    _e('ViT-B-16', 'laion2b_s34b_b88k', GELU, hub='laion/CLIP-ViT-B-16-laion2B-s34B-b88K'),
    _e('ViT-B-16', 'datacomp_xl_s13b_b90k', GELU, hub='laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K'),
    _e('ViT-B-16', 'datacomp_l_s1b_b8k', GELU, hub='laion/CLIP-ViT-B-16-DataComp.L-s1B-b8K'),
    _e('ViT-B-16', 'commonpool_l_clip_s1b_b8k', GELU, hub='laion/CLIP-ViT-B-16-CommonPool.L.clip-s1B-b8K'),
    _e('ViT-B-16', 'commonpool_l_laion_s1b_b8k', GELU, hub='laion/CLIP-ViT-B-16-CommonPool.L.laion-s1B-b8K'),
    _e('ViT-B-16', 'commonpool_l_image_s1b_b8k', GELU, hub='laion/CLIP-ViT-B-16-CommonPool.L.image-s1B-b8K'),
    _e('ViT-B-16', 'commonpool_l_text_s1b_b8k', GELU, hub='laion/CLIP-ViT-B-16-CommonPool.L.text-s1B-b8K'),
    _e('ViT-B-16', 'commonpool_l_basic_s1b_b8k', GELU, hub='laion/CLIP-ViT-B-16-CommonPool.L.basic-s1B-b8K'),
    _e('ViT-B-16', 'commonpool_l_s1b_b8k', GELU, hub='laion/CLIP-ViT-B-16-CommonPool.L-s1B-b8K'),
    _e('ViT-B-16', 'dfn2b', QUICK, hub='apple/DFN2B-CLIP-ViT-B-16'),
    _e('ViT-B-16', 'metaclip_400m', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/b16_400m.pt', hub='timm/vit_base_patch16_clip_224.metaclip_400m'),
    _e('ViT-B-16', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/b16_fullcc2.5b.pt', hub='timm/vit_base_patch16_clip_224.metaclip_2pt5b'),
    _e('ViT-B-16-plus-240', 'laion400m_e31', GELU, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16_plus_240-laion400m_e31-8fb26589.pt', sha256='8fb26589', hub='timm/vit_base_patch16_plus_clip_240.laion400m_e31'),
    _e('ViT-B-16-plus-240', 'laion400m_e32', GELU, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_16_plus_240-laion400m_e32-699c4b84.pt', sha256='699c4b84', hub='timm/vit_base_patch16_plus_clip_240.laion400m_e31'),
    _e('ViT-L-14', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt', sha256='b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836', hub='timm/vit_large_patch14_clip_224.openai'),
    _e('ViT-L-14', 'laion400m_e31', GELU, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_l_14-laion400m_e31-69988bb6.pt', sha256='69988bb6', hub='timm/vit_large_patch14_clip_224.laion400m_e31'),
    _e('ViT-L-14', 'laion400m_e32', GELU, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_l_14-laion400m_e32-3d133497.pt', sha256='3d133497', hub='timm/vit_large_patch14_clip_224.laion400m_e32'),
    _e('ViT-L-14', 'laion2b_s32b_b82k', GELU, hub='laion/CLIP-ViT-L-14-laion2B-s32B-b82K', norm='inception'),
    _e('ViT-L-14', 'datacomp_xl_s13b_b90k', GELU, hub='laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K'),
    _e('ViT-L-14', 'commonpool_xl_clip_s13b_b90k', GELU, hub='laion/CLIP-ViT-L-14-CommonPool.XL.clip-s13B-b90K'),
    _e('ViT-L-14', 'commonpool_xl_laion_s13b_b90k', GELU, hub='laion/CLIP-ViT-L-14-CommonPool.XL.laion-s13B-b90K'),
    _e('ViT-L-14', 'commonpool_xl_s13b_b90k', GELU, hub='laion/CLIP-ViT-L-14-CommonPool.XL-s13B-b90K'),
    _e('ViT-L-14', 'metaclip_400m', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/l14_400m.pt', hub='timm/vit_large_patch14_clip_224.metaclip_400m'),
    _e('ViT-L-14', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/l14_fullcc2.5b.pt', hub='timm/vit_large_patch14_clip_224.metaclip_2pt5b'),
    _e('ViT-L-14', 'dfn2b', QUICK, hub='apple/DFN2B-CLIP-ViT-L-14'),
    _e('ViT-L-14', 'dfn2b_s39b', GELU, hub='apple/DFN2B-CLIP-ViT-L-14-39B'),
    _e('ViT-L-14-336', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt', sha256='3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02', hub='timm/vit_large_patch14_clip_336.openai'),
    _e('ViT-H-14', 'laion2b_s32b_b79k', GELU, hub='laion/CLIP-ViT-H-14-laion2B-s32B-b79K'),
    _e('ViT-H-14', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/h14_fullcc2.5b.pt', hub='timm/vit_huge_patch14_clip_224.metaclip_2pt5b'),
    _e('ViT-H-14', 'metaclip_altogether', GELU, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/h14_v1.2_altogether.pt', hub='timm/vit_huge_patch14_clip_224.metaclip_altogether'),
    _e('ViT-H-14', 'dfn5b', QUICK, hub='apple/DFN5B-CLIP-ViT-H-14', resize_mode='squash'),
    _e('ViT-H-14-378', 'dfn5b', QUICK, hub='apple/DFN5B-CLIP-ViT-H-14-378', resize_mode='squash'),
    _e('ViT-g-14', 'laion2b_s12b_b42k', GELU, hub='laion/CLIP-ViT-g-14-laion2B-s12B-b42K'),
    _e('ViT-g-14', 'laion2b_s34b_b88k', GELU, hub='laion/CLIP-ViT-g-14-laion2B-s34B-b88K'),
    _e('ViT-bigG-14', 'laion2b_s39b_b160k', GELU, hub='laion/CLIP-ViT-bigG-14-laion2B-39B-b160k'),
    _e('ViT-bigG-14', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/G14_fullcc2.5b.pt', hub='timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b'),
    _e('RN50-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt', sha256='afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762', hub='timm/resnet50_clip.openai'),
    _e('RN50-quickgelu', 'yfcc15m', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn50-quickgelu-yfcc15m-455df137.pt', sha256='455df137', hub='timm/resnet50_clip.yfcc15m'),
    _e('RN50-quickgelu', 'cc12m', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn50-quickgelu-cc12m-f000538c.pt', sha256='f000538c', hub='timm/resnet50_clip.cc12m'),
    _e('RN101-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt', sha256='8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599', hub='timm/resnet101_clip.openai'),
    _e('RN101-quickgelu', 'yfcc15m', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/rn101-quickgelu-yfcc15m-3e04b30e.pt', sha256='3e04b30e', hub='timm/resnet101_clip.yfcc15m'),
    _e('RN50x4-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt', sha256='7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd', hub='timm/resnet50x4_clip.openai'),
    _e('RN50x16-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt', sha256='52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa', hub='timm/resnet50x16_clip.openai'),
    _e('RN50x64-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt', sha256='be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c', hub='timm/resnet50x64_clip.openai'),
    _e('ViT-B-32-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt', sha256='40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af', hub='timm/vit_base_patch32_clip_224.openai'),
    _e('ViT-B-32-quickgelu', 'laion400m_e31', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-quickgelu-laion400m_e31-d867053b.pt', sha256='d867053b', hub='timm/vit_base_patch32_clip_224.laion400m_e31'),
    _e('ViT-B-32-quickgelu', 'laion400m_e32', QUICK, url='https://github.com/mlfoundations/open_clip/releases/download/v0.2-weights/vit_b_32-quickgelu-laion400m_e32-46683a32.pt', sha256='46683a32', hub='timm/vit_base_patch32_clip_224.laion400m_e32'),
    _e('ViT-B-32-quickgelu', 'metaclip_400m', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/b32_400m.pt', hub='timm/vit_base_patch32_clip_224.metaclip_400m'),
    _e('ViT-B-32-quickgelu', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/b32_fullcc2.5b.pt', hub='timm/vit_base_patch32_clip_224.metaclip_2pt5b'),
    _e('ViT-B-16-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt', sha256='5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f', hub='timm/vit_base_patch16_clip_224.openai'),
    _e('ViT-B-16-quickgelu', 'dfn2b', QUICK, hub='apple/DFN2B-CLIP-ViT-B-16'),
    _e('ViT-B-16-quickgelu', 'metaclip_400m', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/b16_400m.pt', hub='timm/vit_base_patch16_clip_224.metaclip_400m'),
    _e('ViT-B-16-quickgelu', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/b16_fullcc2.5b.pt', hub='timm/vit_base_patch16_clip_224.metaclip_2pt5b'),
    _e('ViT-L-14-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt', sha256='b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836', hub='timm/vit_large_patch14_clip_224.openai'),
    _e('ViT-L-14-quickgelu', 'metaclip_400m', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/l14_400m.pt', hub='timm/vit_large_patch14_clip_224.metaclip_400m'),
    _e('ViT-L-14-quickgelu', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/l14_fullcc2.5b.pt', hub='timm/vit_large_patch14_clip_224.metaclip_2pt5b'),
    _e('ViT-L-14-quickgelu', 'dfn2b', QUICK, hub='apple/DFN2B-CLIP-ViT-L-14'),
    _e('ViT-L-14-336-quickgelu', 'openai', QUICK, url='https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt', sha256='3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02', hub='timm/vit_large_patch14_clip_336.openai'),
    _e('ViT-H-14-quickgelu', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/h14_fullcc2.5b.pt', hub='timm/vit_huge_patch14_clip_224.metaclip_2pt5b'),
    _e('ViT-H-14-quickgelu', 'dfn5b', QUICK, hub='apple/DFN5B-CLIP-ViT-H-14', resize_mode='squash'),
    _e('ViT-H-14-378-quickgelu', 'dfn5b', QUICK, hub='apple/DFN5B-CLIP-ViT-H-14-378', resize_mode='squash'),
    _e('ViT-bigG-14-quickgelu', 'metaclip_fullcc', QUICK, url='https://dl.fbaipublicfiles.com/MMPT/metaclip/G14_fullcc2.5b.pt', hub='timm/vit_gigantic_patch14_clip_224.metaclip_2pt5b'),
)

# OpenCLIP architectures with pretrained weights that torchclip does not build, and why.
EXCLUDED: dict[str, str] = {
    'roberta-ViT-B-32': 'hf-text-tower',
    'xlm-roberta-base-ViT-B-32': 'hf-text-tower',
    'xlm-roberta-large-ViT-H-14': 'hf-text-tower',
    'convnext_base': 'timm-image-tower',
    'convnext_base_w': 'timm-image-tower',
    'convnext_base_w_320': 'timm-image-tower',
    'convnext_large_d': 'timm-image-tower',
    'convnext_large_d_320': 'timm-image-tower',
    'convnext_xxlarge': 'timm-image-tower',
    'coca_ViT-B-32': 'coca',
    'coca_ViT-L-14': 'coca',
    'EVA01-g-14': 'timm-image-tower',
    'EVA01-g-14-plus': 'timm-image-tower',
    'EVA02-B-16': 'timm-image-tower',
    'EVA02-L-14': 'timm-image-tower',
    'EVA02-L-14-336': 'timm-image-tower',
    'EVA02-E-14': 'timm-image-tower',
    'EVA02-E-14-plus': 'timm-image-tower',
    'ViT-B-16-SigLIP': 'siglip',
    'ViT-B-16-SigLIP-256': 'siglip',
    'ViT-B-16-SigLIP-i18n-256': 'siglip',
    'ViT-B-16-SigLIP-384': 'siglip',
    'ViT-B-16-SigLIP-512': 'siglip',
    'ViT-L-16-SigLIP-256': 'siglip',
    'ViT-L-16-SigLIP-384': 'siglip',
    'ViT-SO400M-14-SigLIP': 'siglip',
    'ViT-SO400M-16-SigLIP-i18n-256': 'siglip',
    'ViT-SO400M-14-SigLIP-378': 'siglip',
    'ViT-SO400M-14-SigLIP-384': 'siglip',
    'ViT-B-32-SigLIP2-256': 'siglip',
    'ViT-B-16-SigLIP2': 'siglip',
    'ViT-B-16-SigLIP2-256': 'siglip',
    'ViT-B-16-SigLIP2-384': 'siglip',
    'ViT-B-16-SigLIP2-512': 'siglip',
    'ViT-L-16-SigLIP2-256': 'siglip',
    'ViT-L-16-SigLIP2-384': 'siglip',
    'ViT-L-16-SigLIP2-512': 'siglip',
    'ViT-SO400M-14-SigLIP2': 'siglip',
    'ViT-SO400M-14-SigLIP2-378': 'siglip',
    'ViT-SO400M-16-SigLIP2-256': 'siglip',
    'ViT-SO400M-16-SigLIP2-384': 'siglip',
    'ViT-SO400M-16-SigLIP2-512': 'siglip',
    'ViT-gopt-16-SigLIP2-256': 'siglip',
    'ViT-gopt-16-SigLIP2-384': 'siglip',
    'ViT-L-14-CLIPA': 'clipa',
    'ViT-L-14-CLIPA-336': 'clipa',
    'ViT-H-14-CLIPA': 'clipa',
    'ViT-H-14-CLIPA-336': 'clipa',
    'ViT-bigG-14-CLIPA': 'clipa',
    'ViT-bigG-14-CLIPA-336': 'clipa',
    'nllb-clip-base': 'hf-text-tower',
    'nllb-clip-large': 'hf-text-tower',
    'nllb-clip-base-siglip': 'siglip',
    'nllb-clip-large-siglip': 'siglip',
    'MobileCLIP-S1': 'timm-image-tower',
    'MobileCLIP-S2': 'timm-image-tower',
    'MobileCLIP-B': 'timm-image-tower',
    'MobileCLIP2-B': 'timm-image-tower',
    'MobileCLIP2-S0': 'timm-image-tower',
    'MobileCLIP2-S2': 'timm-image-tower',
    'MobileCLIP2-S3': 'timm-image-tower',
    'MobileCLIP2-S4': 'timm-image-tower',
    'MobileCLIP2-L-14': 'timm-image-tower',
    'ViTamin-S': 'timm-image-tower',
    'ViTamin-S-LTT': 'timm-image-tower',
    'ViTamin-B': 'timm-image-tower',
    'ViTamin-B-LTT': 'timm-image-tower',
    'ViTamin-L': 'timm-image-tower',
    'ViTamin-L-256': 'timm-image-tower',
    'ViTamin-L-336': 'timm-image-tower',
    'ViTamin-L-384': 'timm-image-tower',
    'ViTamin-L2': 'timm-image-tower',
    'ViTamin-L2-256': 'timm-image-tower',
    'ViTamin-L2-336': 'timm-image-tower',
    'ViTamin-L2-384': 'timm-image-tower',
    'ViTamin-XL-256': 'timm-image-tower',
    'ViTamin-XL-336': 'timm-image-tower',
    'ViTamin-XL-384': 'timm-image-tower',
    'PE-Core-T-16-384': 'timm-image-tower',
    'PE-Core-S-16-384': 'timm-image-tower',
    'PE-Core-B-16': 'timm-image-tower',
    'PE-Core-L-14-336': 'timm-image-tower',
    'PE-Core-bigG-14-448': 'timm-image-tower',
    'ViT-H-14-worldwide': 'foreign-tokenizer',
    'ViT-H-14-worldwide-378': 'foreign-tokenizer',
    'ViT-bigG-14-worldwide': 'foreign-tokenizer',
    'ViT-bigG-14-worldwide-378': 'foreign-tokenizer',
    'ViT-H-14-worldwide-quickgelu': 'foreign-tokenizer',
}
# ---- end generated ----

_REGISTRY: dict[tuple[str, str], Pretrained] = {(e.arch, e.tag): e for e in _ZOO}


def _clean_tag(tag: str) -> str:
    # OpenCLIP's normalisation: "LAION2B-S34B-B79K" finds laion2b_s34b_b79k.
    return tag.lower().replace("-", "_")


def _zoo_arch(name: str) -> str | None:
    key = canonical_name(name)
    return OPENAI_TWINS.get(key, key) if key is not None else None


def list_pretrained(as_str: bool = False) -> list[tuple[str, str]] | list[str]:
    """Every (architecture, tag) pair of the zoo in OpenCLIP's order, or ``"arch:tag"`` strings."""
    return [e.name if as_str else (e.arch, e.tag) for e in _ZOO]


def list_pretrained_tags(name: str) -> list[str]:
    """The tags of architecture ``name`` (OpenCLIP or OpenAI spelling); empty when it has none."""
    arch = _zoo_arch(name)
    return [e.tag for e in _ZOO if e.arch == arch]


def get_pretrained(name: str, tag: str) -> Pretrained:
    """The zoo entry for ``(name, tag)``; KeyError naming the architecture's tags when there is none."""
    arch = _zoo_arch(name)
    entry = _REGISTRY.get((arch, _clean_tag(tag))) if arch is not None else None
    if entry is None:
        tags = list_pretrained_tags(name)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained weights"
        raise KeyError(f"no pretrained weights {tag!r} for {name!r}; {known}")
    return entry


def openai_pretrained(name: str) -> Pretrained:
    """OpenAI's released checkpoint for an OpenAI name (``ViT-B/32``, ``RN50``) or its OpenCLIP spelling."""
    arch = _zoo_arch(name)
    entry = _REGISTRY.get((arch, "openai")) if arch is not None else None
    if entry is None:
        raise KeyError(f"no OpenAI checkpoint named {name!r}; available: {', '.join(OPENAI_MODELS)}")
    return entry


def pretrained_url(name: str, tag: str = "openai") -> str:
    """The direct download URL of ``(name, tag)``; ValueError for hub-only entries."""
    entry = get_pretrained(name, tag)
    if not entry.url:
        raise ValueError(f"{entry.name} has no direct URL; it is on the HF hub as {entry.hf_hub}")
    return entry.url


def download_pretrained(name: str, tag: str = "openai", *, progress: bool = True, cache: Path | None = None,
                        source: str | None = None, revision: str | None = None) -> Path:
    """Path to the checkpoint of ``(name, tag)`` in the cache, downloading and verifying it if needed.

    The default tag is OpenAI's release. With ``TORCHCLIP_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1`` for hub entries)
    only the caches are consulted; the error then says where to put the file.
    """
    entry = openai_pretrained(name) if tag == "openai" else get_pretrained(name, tag)
    return entry.download(source=source, revision=revision, progress=progress, cache=cache)
