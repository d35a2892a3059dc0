"""CLIP_benchmark's own command line vs ``torchclip eval`` on the emoji val concepts, in one command:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip_benchmark_run.py [--checkpoint runs/emoji_findings/model.safetensors]

Needs ``clip_benchmark`` (1.6.2) in ``.bench-venv``, with torchclip installed there too:
``.bench-venv/bin/pip install clip_benchmark requests "numpy<2.4" torch==2.13.0`` (it imports ``requests``
without declaring it, and its ``accuracy()`` calls ``float()`` on a 1-element array, an error since NumPy
2.4). Builds three CLIP_benchmark webdatasets under ``--work`` from google-val + twitter-val:
``wds/emoji_category`` (the 9 categories other than Component, template ``an emoji of {c}.``),
``wds/emoji_names`` and ``wds/emoji_names_google`` (retrieval over the val names). Then runs, one process at
a time, ``torchclip eval clip-benchmark eval --model_type torchclip ...`` in .bench-venv (through
``openclip_shim.py``: PyPI's CUDA torchvision does not import on the CPU torch) and ``torchclip eval
zeroshot`` / ``retrieval`` on the original shards in .venv, and writes ``benchmarks/results_clip_benchmark.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TORCHCLIP_SHARED", REPO.parent / "shared")) / "data" / "emoji"
STYLES = ("google", "twitter")
TEMPLATE = "an emoji of {}."
EXCLUDE = "Component"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def _samples(shard: Path) -> list[dict[str, bytes]]:
    """The shard's samples in file order, as {ext: bytes} with the key under ``__key__``."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for m in tar:
            if m.isfile():
                key, _, ext = m.name.partition(".")
                out.setdefault(key, {"__key__": key.encode()})[ext] = tar.extractfile(m).read()
    return list(out.values())


def build(data: Path, work: Path) -> dict[str, Path]:
    """CLIP_benchmark's wds layout (datasets/builder.py ``build_wds_dataset``): ``<root>/test/{0..n-1}.tar``,
    ``test/nshards.txt``, and ``classnames.txt`` + ``zeroshot_classification_templates.txt`` for
    classification or ``dataset_type.txt`` = ``retrieval`` (images + ``.txt`` captions, one per line)."""
    classes = [c for c in json.loads((data / "classes.json").read_text())["categories"] if c != EXCLUDE]
    index = {c: i for i, c in enumerate(classes)}
    roots = {name: work / name for name in ("emoji_category", "emoji_names", "emoji_names_google")}
    for root in roots.values():
        (root / "test").mkdir(parents=True, exist_ok=True)
    (roots["emoji_category"] / "classnames.txt").write_text("\n".join(classes) + "\n")
    (roots["emoji_category"] / "zeroshot_classification_templates.txt").write_text(TEMPLATE.replace("{}", "{c}") + "\n")
    for name in ("emoji_names", "emoji_names_google"):
        (roots[name] / "dataset_type.txt").write_text("retrieval\n")
    styles = {"emoji_category": STYLES, "emoji_names": STYLES, "emoji_names_google": ("google",)}
    for name, root in roots.items():
        (root / "test" / "nshards.txt").write_text(f"{len(styles[name])}\n")
        for i, style in enumerate(styles[name]):
            with tarfile.open(root / "test" / f"{i}.tar", "w") as tar:
                for s in _samples(data / f"{style}-val.tar"):
                    meta, key = json.loads(s["json"]), s["__key__"].decode()
                    if name == "emoji_category":
                        if meta["category"] == EXCLUDE:
                            continue
                        _add(tar, f"{key}.cls", str(index[meta["category"]]).encode())
                    else:
                        _add(tar, f"{key}.txt", meta["name"].encode())
                    _add(tar, f"{key}.png", s["png"])  # the original bytes: same pixels on both sides
    return roots


def _run(cmd: list[str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}); see {log}")


def _version(py: str, dist: str) -> str:
    code = f"from importlib.metadata import version; print(version({dist!r}))"
    return subprocess.run([py, "-c", code], capture_output=True, text=True).stdout.strip() or "?"


def one_caption_per_image(checkpoint: str, model: str, shards: str) -> dict[str, float]:
    """torchclip's recall on CLIP_benchmark's positives: image i's own caption only, duplicate strings kept."""
    from torchclip.evaluation.clip_benchmark import load_model, resolve_tokenizer
    from torchclip.evaluation.datasets import load_webdataset
    from torchclip.evaluation.features import encode_texts, extract_image_features
    from torchclip.evaluation.metrics import positives_from_index, retrieval_recall
    from torchclip.evaluation.retrieval import retrieval_scores

    m, path = load_model(model, checkpoint)
    ds = load_webdataset(shards, caption_key="json:name")
    text = encode_texts(m, resolve_tokenizer(m, None, path), [c[0] for c in ds.captions])
    sim = retrieval_scores(extract_image_features(m, ds, cache_dir=False, progress=False), text)
    return retrieval_recall(sim, positives_from_index(range(len(ds)), len(ds)), (1, 5, 10))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="runs/emoji_findings/model.safetensors")
    p.add_argument("--model", default="cpu-vit-64")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--work", type=Path, default=Path("/tmp/torchclip_clip_benchmark"))
    p.add_argument("--bench-python", default=str(REPO / ".bench-venv/bin/python"), help="has clip_benchmark")
    p.add_argument("--python", default=str(REPO / ".venv/bin/python"), help="has torchclip (its test venv)")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results_clip_benchmark.md")
    a = p.parse_args()
    work, log = a.work.resolve(), a.work.resolve() / "log.txt"
    roots = build(a.data, work)
    log.unlink(missing_ok=True)
    model = ["--model", a.model, "--pretrained", a.checkpoint]
    cb = [a.bench_python, "benchmarks/openclip_shim.py", "-m", "torchclip.cli", "eval", "clip-benchmark", "eval",
          "--model_type", "torchclip", *model, "--dataset_root", f"{work}/{{dataset}}", "--no_amp",
          "--num_workers", "0", "--batch_size", "64", "--recall_k", "1", "5", "10",
          "--output", f"{work}/cb_{{dataset}}_{{task}}.json"]
    _run([*cb, "--dataset", "wds/emoji_category"], log)
    _run([*cb, "--dataset", "wds/emoji_names", "wds/emoji_names_google", "--task", "zeroshot_retrieval"], log)
    shards = "::".join(str(a.data / f"{s}-val.tar") for s in STYLES)
    tc = [a.python, "-m", "torchclip.cli", "eval"]
    common = [*model, "--no-cache", "--quiet", "--batch-size", "64"]
    _run([*tc, "zeroshot", *common, "--dataset", shards, "--label-key", "json:category", "--exclude-class", EXCLUDE,
          "--classnames", str(roots["emoji_category"] / "classnames.txt"), "--templates", TEMPLATE,
          "--output", f"{work}/tc_emoji_category.json"], log)
    for name, ds in (("emoji_names", shards), ("emoji_names_google", str(a.data / "google-val.tar"))):
        _run([*tc, "retrieval", *common, "--dataset", ds, "--caption-key", "json:name",
              "--recall-k", "1", "5", "10", "--output", f"{work}/tc_{name}.json"], log)

    same_positives = one_caption_per_image(a.checkpoint, a.model, shards)
    rows, worst = [], 0.0
    for name, task, n in (("emoji_category", "zeroshot_classification", "acc1 acc5 mean_per_class_recall"),
                          ("emoji_names", "zeroshot_retrieval", None), ("emoji_names_google", "zeroshot_retrieval", None)):
        ours = json.loads((work / f"tc_{name}.json").read_text())["metrics"]
        theirs = json.loads((work / f"cb_{name}_{task}.json").read_text())["metrics"]
        for k in (n.split() if n else sorted(theirs, key=lambda k: (k.split("@")[0], int(k.split("@")[1])))):
            d = ours[k] - theirs[k]
            if name != "emoji_names":
                worst = max(worst, abs(d))
            alt = f"{same_positives[k] * 100:.4f}" if name == "emoji_names" else ""
            rows.append(f"| {name} | {k} | {theirs[k] * 100:.4f} | {ours[k] * 100:.4f} | {d * 100:+.2g} | {alt} |")
    versions = ", ".join(f"{d} {_version(a.bench_python, d)}" for d in ("clip_benchmark", "torch", "webdataset"))
    md = f"""## CLIP_benchmark vs `torchclip eval` (emoji val concepts, {a.checkpoint})

Reproduce: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip_benchmark_run.py` ({versions}).
CLIP_benchmark side: its own CLI, `torchclip eval clip-benchmark eval --model_type torchclip --model {a.model}
--pretrained {a.checkpoint} --no_amp --dataset wds/emoji_category` (and `--task zeroshot_retrieval` on the
`wds/emoji_names*` sets), reading wds shards this script builds from google-val + twitter-val. torchclip side:
`torchclip eval zeroshot --label-key json:category --exclude-class Component --templates '{TEMPLATE}'` and
`torchclip eval retrieval --caption-key json:name` on the original shards. Values in %.

| dataset | metric | CLIP_benchmark | torchclip | diff | torchclip, CLIP_benchmark's positives |
| --- | --- | ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

Largest |diff| where the definitions agree: {worst * 100:.2g} points (CLIP_benchmark writes retrieval
recall as a float32 mean, torchclip count / n in float64; classification is bit-identical).
`emoji_names` (398 images; each name is drawn in both styles) differs by definition: CLIP_benchmark keeps
one caption per image, positive for that image only, so each name is in the gallery twice; torchclip
deduplicates the 199 names, each positive for both drawings. The last column scores torchclip's features
with CLIP_benchmark's positives: text->image (image_retrieval) then agrees; image->text differs only by
ties, as an image's caption ties exactly with its duplicate string (a negative there): torchclip counts
ties against the model, CLIP_benchmark's `torch.topk` takes whichever tied index it returns first.
"""
    a.output.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
