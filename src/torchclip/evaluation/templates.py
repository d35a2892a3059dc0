"""Prompt templates and class-name lists: the project's named sets, and loaders for users' own files.

Zero-shot accuracy depends on the text a class is described with almost as much as on the model (the
paper: +1.3% on ImageNet from "A photo of a {label}." over the bare name, +3.5% from an ensemble). So
template sets are named, versioned data that a result can cite, and users' sets load from the formats they
already have: a JSON list, OpenAI's ImageNet notebook export (``imagenet_templates``), the per-dataset
prompts file (``datasets.<name>.templates``) or a text file with one template per line.

A template holds ``{}`` where the class name goes. It is filled with ``str.replace``, never
``str.format``, so class names with braces and templates with other braces stay literal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TEMPLATE_SETS",
    "ClassName",
    "fill",
    "resolve_templates",
    "load_templates",
    "load_classnames",
    "load_class_prompts",
    "prompt_name",
]

# A class is one name or a list of synonyms (as in OpenAI's FER2013 prompts); synonyms are averaged too.
ClassName = str | Sequence[str]
# A class's own prompts: full sentences (CuPL's layout), or groups of them that weigh the same whatever
# their length (each group is averaged first, then the groups).
ClassPrompts = Sequence[str] | Sequence[Sequence[str]]

PLACEHOLDER = "{}"

# The project's own template sets. "ensemble" follows the paper's recipe (vary rendering style, quality,
# size and framing so that the mean embedding keeps the concept and averages out the wording) but is
# written for this project; users who want OpenAI's 80 load them from a file.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "bare": ("{}",),
    "photo": ("a photo of a {}.",),
    "ensemble": (
        "a photo of a {}.",
        "a blurry photo of a {}.",
        "a close-up photo of the {}.",
        "a low resolution picture of a {}.",
        "a bright photo of the {}.",
        "a dark picture of a {}.",
        "a drawing of a {}.",
        "a sketch of the {}.",
        "a painting of a {}.",
        "a cartoon {}.",
        "a rendering of the {}.",
        "an icon of a {}.",
        "a small {}.",
        "a large {}.",
        "a picture of one {}.",
        "a good picture of the {}.",
        "a bad picture of the {}.",
        "a toy {}.",
    ),
    # For pictograms (the emoji benchmark): the same idea with wording about symbols and drawing styles.
    "emoji": (
        "{}",
        "an emoji of {}.",
        "a {} emoji.",
        "the {} emoji.",
        "an icon of {}.",
        "a {} icon.",
        "a drawing of {}.",
        "a cartoon of {}.",
        "a flat illustration of {}.",
        "a symbol for {}.",
        "a pictogram of {}.",
        "{}, emoji",
    ),
}


def _check(templates: Sequence[str], origin: str) -> tuple[str, ...]:
    if isinstance(templates, str):
        raise TypeError(f"{origin}: expected a list of templates, got one string {templates!r}")
    out = tuple(templates)
    if not out:
        raise ValueError(f"{origin}: no templates")
    for t in out:
        if not isinstance(t, str):
            raise TypeError(f"{origin}: template {t!r} is not a string")
        if PLACEHOLDER not in t:
            raise ValueError(f"{origin}: template {t!r} has no '{{}}' for the class name")
    return out


def fill(template: str, name: str) -> str:
    """The prompt for one class: every ``{}`` replaced by ``name``, other braces untouched."""
    return template.replace(PLACEHOLDER, name)


def prompt_name(name: str) -> str:
    """A label as readable text: ``animal-mammal`` -> ``animal mammal``, ``Food & Drink`` -> ``food and drink``.

    Dataset labels are identifiers more often than phrases; the paper found hand-edited names worth +1.5%
    on ImageNet. This is the mechanical part of that edit, used only where a caller asks for it.
    """
    text = name.replace("_", " ").replace("-", " ").replace("&", "and")
    return " ".join(text.split()).lower()


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``file.json:KEY`` -> (file, KEY), unless the whole string is an existing path (Windows drives...)."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    path, key = spec.rsplit(":", 1)
    return path, key or None


def _from_json(doc: Any, key: str | None, field: str, origin: str) -> Any:
    """Find a list in the JSON layouts in circulation: a bare list, ``{field: [...]}``, OpenAI's notebook
    export (``imagenet_<field>``), or the per-dataset file (``{"datasets": {name: {field: [...]}}}``)."""
    if isinstance(doc, list):
        if key is not None:
            raise ValueError(f"{origin}: the file holds a plain list, so key {key!r} selects nothing")
        return doc
    if not isinstance(doc, dict):
        raise ValueError(f"{origin}: expected a JSON list or object, got {type(doc).__name__}")
    if key is not None:
        datasets = doc.get("datasets", doc)
        if key in datasets and isinstance(datasets[key], dict):
            if field not in datasets[key]:
                raise ValueError(f"{origin}: dataset {key!r} has no {field!r}")
            return datasets[key][field]
        if key in doc and isinstance(doc[key], list):
            return doc[key]
        raise ValueError(f"{origin}: no key {key!r}; keys: {', '.join(sorted(datasets))[:300]}")
    for k in (field, f"imagenet_{field}"):
        if isinstance(doc.get(k), list):
            return doc[k]
    if "datasets" in doc:
        raise ValueError(f"{origin}: a per-dataset file; pick one with '{origin}:<dataset>'")
    raise ValueError(f"{origin}: no {field!r} list in this JSON object (keys: {', '.join(sorted(doc))})")


def _read_list(spec: str | os.PathLike[str], field: str) -> list[Any]:
    path, key = _split_spec(str(spec))
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{field} file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        return list(_from_json(json.loads(text), key, field, str(spec)))
    if key is not None:
        raise ValueError(f"{spec}: a key selects a list only in JSON files")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def load_templates(spec: str | os.PathLike[str]) -> tuple[str, ...]:
    """Templates from a file: ``.json`` (see ``_from_json``; ``file.json:CIFAR10`` picks a dataset) or text,
    one template per line (``#`` comments)."""
    return _check(_read_list(spec, "templates"), str(spec))


def resolve_templates(spec: str | Sequence[str] | os.PathLike[str]) -> tuple[str, ...]:
    """A template set from a name in ``TEMPLATE_SETS``, a file (``load_templates``) or a list of strings.

    A string that is neither a known name nor a file, but holds ``{}``, is one template: the command line
    then accepts ``--templates 'a photo of a {}.'``.
    """
    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s in TEMPLATE_SETS:
            return TEMPLATE_SETS[s]
        path, _ = _split_spec(s)
        if Path(path).is_file():
            return load_templates(s)
        if PLACEHOLDER in s:
            return (s,)
        raise ValueError(
            f"unknown template set {s!r}: use one of {', '.join(TEMPLATE_SETS)}, a file, or a template with '{{}}'"
        )
    return _check(spec, "templates")


def load_classnames(spec: str | os.PathLike[str]) -> list[ClassName]:
    """Class names from a file: ``.json`` (a list, ``{"classes": [...]}``, OpenAI's ``imagenet_classes``,
    or ``file.json:<dataset>``; an entry may be a list of synonyms) or text, one name per line."""
    names = _read_list(spec, "classes")
    if not names:
        raise ValueError(f"{spec}: no class names")
    out: list[ClassName] = []
    for n in names:
        if isinstance(n, str):
            out.append(n)
        elif isinstance(n, list) and n and all(isinstance(s, str) for s in n):
            out.append(list(n))
        else:
            raise ValueError(f"{spec}: class entry {n!r} is neither a name nor a list of synonyms")
    return out


def prompt_groups(prompts: ClassPrompts, where: str) -> list[list[str]]:
    """One class's prompts as groups: a flat list is one group; empty text or an empty group is an error."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not len(prompts):
        raise ValueError(f"{where}: expected a non-empty list of prompts (or of prompt groups), got {prompts!r:.80}")
    groups = [[p] if isinstance(p, str) else p for p in prompts] if any(not isinstance(p, str) for p in prompts) \
        else [list(prompts)]
    for g in groups:
        if isinstance(g, str) or not isinstance(g, Sequence) or not len(g) \
                or any(not isinstance(t, str) or not t.strip() for t in g):
            raise ValueError(f"{where}: a prompt group must be a non-empty list of non-empty strings, got {g!r:.80}")
    return [list(g) for g in groups]


def load_class_prompts(spec: str | os.PathLike[str]) -> dict[str, list[list[str]]]:
    """Per-class prompts from a JSON object ``{class: [prompt, ...]}`` (the layout CuPL publishes) or
    ``{class: [[prompt, ...], [prompt, ...]]}`` (groups of equal weight); ``file.json:KEY`` picks a nested
    object. The prompts are used as written: no template is applied."""
    path, key = _split_spec(str(spec))
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"class prompts file {p} does not exist")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{spec}: not a JSON file ({e})") from None
    if key is not None:
        if not isinstance(doc, dict) or not isinstance(doc.get(key), dict):
            raise ValueError(f"{spec}: no object under key {key!r}")
        doc = doc[key]
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{spec}: expected a JSON object mapping each class to its prompts")
    return {str(c): prompt_groups(v, f"{spec}: class {c!r}") for c, v in doc.items()}
