"""Evaluation of CLIP models: zero-shot classification, linear and few-shot probes, retrieval.

The pieces follow the paper and CLIP_benchmark (reference §8-9):

* ``zeroshot``: class names x templates -> normalized-mean class vectors (cached), logits, metrics;
* ``probe``: L-BFGS logistic regression on frozen features with the paper's C search; k-shot probes;
* ``retrieval``: image<->text recall@K with several captions per image;
* ``datasets`` / ``features``: image folders, WebDataset shards and CSV files; features extracted once
  and cached by a hash of the weights and the images;
* ``clip_benchmark``: CLIP_benchmark's loader contract and result JSON;

The library never imports the trainer: evaluating a checkpoint needs only the model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# names imported on first use: the command line builds its parsers without importing torch
_EXPORTS = {
    "clip_benchmark": ("BenchmarkTokenizer", "benchmark_json", "load_torchclip", "register",
                       "write_benchmark_json"),
    "datasets": ("ImageDataset", "ImageRef", "load_csv", "load_image_folder", "load_webdataset",
                 "open_dataset"),
    "features": ("encode_texts", "extract_image_features", "model_fingerprint"),
    "metrics": ("classification_metrics", "confusion_matrix", "mean_per_class_recall", "positives_from_index",
                "retrieval_recall", "topk_accuracy"),
    "probe": ("FewShotResult", "ProbeResult", "few_shot_probe", "linear_probe", "sweep_C"),
    "retrieval": ("RetrievalResult", "caption_gallery", "evaluate_retrieval"),
    "templates": ("TEMPLATE_SETS", "load_class_prompts", "load_classnames", "load_templates", "resolve_templates"),
    "zeroshot": ("ZeroShotResult", "build_classifier", "build_prompt_classifier", "evaluate_zeroshot",
                 "hubness_penalty", "zeroshot_logits"),
}
__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS)

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .clip_benchmark import BenchmarkTokenizer as BenchmarkTokenizer
    from .clip_benchmark import benchmark_json as benchmark_json
    from .clip_benchmark import load_torchclip as load_torchclip
    from .clip_benchmark import register as register
    from .clip_benchmark import write_benchmark_json as write_benchmark_json
    from .datasets import ImageDataset as ImageDataset
    from .datasets import ImageRef as ImageRef
    from .datasets import load_csv as load_csv
    from .datasets import load_image_folder as load_image_folder
    from .datasets import load_webdataset as load_webdataset
    from .datasets import open_dataset as open_dataset
    from .features import encode_texts as encode_texts
    from .features import extract_image_features as extract_image_features
    from .features import model_fingerprint as model_fingerprint
    from .metrics import classification_metrics as classification_metrics
    from .metrics import confusion_matrix as confusion_matrix
    from .metrics import mean_per_class_recall as mean_per_class_recall
    from .metrics import positives_from_index as positives_from_index
    from .metrics import retrieval_recall as retrieval_recall
    from .metrics import topk_accuracy as topk_accuracy
    from .probe import FewShotResult as FewShotResult
    from .probe import ProbeResult as ProbeResult
    from .probe import few_shot_probe as few_shot_probe
    from .probe import linear_probe as linear_probe
    from .probe import sweep_C as sweep_C
    from .retrieval import RetrievalResult as RetrievalResult
    from .retrieval import caption_gallery as caption_gallery
    from .retrieval import evaluate_retrieval as evaluate_retrieval
    from .templates import TEMPLATE_SETS as TEMPLATE_SETS
    from .templates import load_class_prompts as load_class_prompts
    from .templates import load_classnames as load_classnames
    from .templates import load_templates as load_templates
    from .templates import resolve_templates as resolve_templates
    from .zeroshot import ZeroShotResult as ZeroShotResult
    from .zeroshot import build_classifier as build_classifier
    from .zeroshot import build_prompt_classifier as build_prompt_classifier
    from .zeroshot import evaluate_zeroshot as evaluate_zeroshot
    from .zeroshot import hubness_penalty as hubness_penalty
    from .zeroshot import zeroshot_logits as zeroshot_logits
