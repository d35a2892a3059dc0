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
    "BenchmarkTokenizer": "clip_benchmark",
    "benchmark_json": "clip_benchmark",
    "load_torchclip": "clip_benchmark",
    "register": "clip_benchmark",
    "write_benchmark_json": "clip_benchmark",
    "ImageDataset": "datasets",
    "ImageRef": "datasets",
    "load_csv": "datasets",
    "load_image_folder": "datasets",
    "load_webdataset": "datasets",
    "open_dataset": "datasets",
    "encode_texts": "features",
    "extract_image_features": "features",
    "model_fingerprint": "features",
    "classification_metrics": "metrics",
    "confusion_matrix": "metrics",
    "mean_per_class_recall": "metrics",
    "positives_from_index": "metrics",
    "retrieval_recall": "metrics",
    "topk_accuracy": "metrics",
    "FewShotResult": "probe",
    "ProbeResult": "probe",
    "few_shot_probe": "probe",
    "linear_probe": "probe",
    "sweep_C": "probe",
    "RetrievalResult": "retrieval",
    "caption_gallery": "retrieval",
    "evaluate_retrieval": "retrieval",
    "TEMPLATE_SETS": "templates",
    "load_classnames": "templates",
    "load_templates": "templates",
    "resolve_templates": "templates",
    "ZeroShotResult": "zeroshot",
    "build_classifier": "zeroshot",
    "evaluate_zeroshot": "zeroshot",
    "zeroshot_logits": "zeroshot",
}
__getattr__, __dir__ = attach(__name__, _EXPORTS)

__all__ = [
    "TEMPLATE_SETS",
    "BenchmarkTokenizer",
    "FewShotResult",
    "ImageDataset",
    "ImageRef",
    "ProbeResult",
    "RetrievalResult",
    "ZeroShotResult",
    "benchmark_json",
    "build_classifier",
    "caption_gallery",
    "classification_metrics",
    "confusion_matrix",
    "encode_texts",
    "evaluate_retrieval",
    "evaluate_zeroshot",
    "extract_image_features",
    "few_shot_probe",
    "linear_probe",
    "load_classnames",
    "load_csv",
    "load_image_folder",
    "load_templates",
    "load_torchclip",
    "load_webdataset",
    "mean_per_class_recall",
    "model_fingerprint",
    "open_dataset",
    "positives_from_index",
    "register",
    "resolve_templates",
    "retrieval_recall",
    "sweep_C",
    "topk_accuracy",
    "write_benchmark_json",
    "zeroshot_logits",
]

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily
    from .clip_benchmark import (
        BenchmarkTokenizer,
        benchmark_json,
        load_torchclip,
        register,
        write_benchmark_json,
    )
    from .datasets import ImageDataset, ImageRef, load_csv, load_image_folder, load_webdataset, open_dataset
    from .features import encode_texts, extract_image_features, model_fingerprint
    from .metrics import (
        classification_metrics,
        confusion_matrix,
        mean_per_class_recall,
        positives_from_index,
        retrieval_recall,
        topk_accuracy,
    )
    from .probe import FewShotResult, ProbeResult, few_shot_probe, linear_probe, sweep_C
    from .retrieval import RetrievalResult, caption_gallery, evaluate_retrieval
    from .templates import TEMPLATE_SETS, load_classnames, load_templates, resolve_templates
    from .zeroshot import ZeroShotResult, build_classifier, evaluate_zeroshot, zeroshot_logits
