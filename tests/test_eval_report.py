"""The emoji findings report (experiments/emoji_report.py) end to end on a miniature fake of the emoji folder
(same layout and keys)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from evalkit import byte_tokenizer, tiny_model, write_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from emoji_report import (  # noqa: E402
    CLASS_PROMPTS,
    IN_STYLES,
    NEW_STYLES,
    checkpoint_trajectory,
    load_emoji,
    make_plots,
    render_markdown,
    run_findings,
)

CATEGORIES = {"red": "Reds & Pinks", "green": "Greens", "blue": "Blues", "yellow": "Component"}


def fake_emoji(root: Path, per_class: int = 3) -> Path:
    """classes.json plus <style>-<split>.tar shards whose colour decides the category."""
    subs = {c: [f"{c}-light", f"{c}-dark"] for c in CATEGORIES}
    root.mkdir(parents=True)
    (root / "classes.json").write_text(json.dumps({
        "categories": sorted(CATEGORIES.values()), "subcategories": sorted(s for v in subs.values() for s in v)}))
    for style in IN_STYLES + NEW_STYLES:
        for split in ("train", "val"):
            samples = []
            for color, cat in CATEGORIES.items():
                for i in range(per_class):
                    concept = f"{split}{color}{i}"
                    meta = {"name": f"{color} thing {i} {split}", "category": cat, "style": style,
                            "subcategory": subs[color][i % 2], "concept_group": concept}
                    samples.append({"key": f"{style}_{concept}", "color": color, "json": meta,
                                    "txt": meta["name"]})
            write_shard(root / f"{style}-{split}.tar", samples)
    return root


@pytest.fixture
def emoji_root(tmp_path: Path) -> Path:
    return fake_emoji(tmp_path / "emoji")


def test_load_emoji_excludes_component(emoji_root: Path) -> None:
    data = load_emoji(emoji_root)
    assert data.categories == ["Blues", "Greens", "Reds & Pinks"]
    assert "yellow-light" not in data.subcategories and len(data.subcategories) == 6
    ds = data.get(IN_STYLES, "val")
    assert len(ds) == 2 * 3 * 3 and ds.captions[0] == ["red thing 0 val"]


def test_findings_and_report(emoji_root: Path, tmp_path: Path) -> None:
    prompts = {"Blues": ["a blue thing."], "Greens": [["green"], ["a green thing.", "grass"]], "Reds & Pinks": ["red"]}
    res = run_findings(tiny_model(), byte_tokenizer(), emoji_root, ks=(1, 2), seeds=(0, 1),
                       cache_dir=tmp_path / "cache", progress=False, probe_C=1.0, class_prompts=prompts)
    assert set(res["prompting"]["bare label"]) == {"in-style", "new-style", *IN_STYLES, *NEW_STYLES}
    assert set(res["prompting"][CLASS_PROMPTS]["in-style"]) == {"category"}
    assert CLASS_PROMPTS in res["fewshot"]["category"]["catch_up"]
    assert res["fewshot"]["category"]["summary"].keys() == {"1", "2"}
    assert res["probe"]["in-style"]["acc1"] > 0.5  # colours: the probe separates them even untrained
    assert res["retrieval"]["in-style"]["text_retrieval_recall@10"] >= res["retrieval"]["in-style"][
        "text_retrieval_recall@1"]
    assert res["chance"]["text_R@1_in-style"] == pytest.approx(1 / res["n_names"]["in-style"])
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt-7.pt"
    ckpt.parent.mkdir(parents=True)
    trained = tiny_model(seed=7)
    torch.save({"torchclip_config": trained.config.to_dict(), "model": trained.state_dict()}, ckpt)
    res["trajectory"] = checkpoint_trajectory([ckpt], byte_tokenizer(), emoji_root, cache_dir=tmp_path / "cache",
                                              progress=False)
    assert res["trajectory"][0]["step"] == 7 and 0 <= res["trajectory"][0]["probe"]["new-style"] <= 1
    json.dumps(res)  # every number is JSON-able
    plots = make_plots(res, tmp_path / "plots")
    assert all(p.stat().st_size > 1000 for p in plots.values())
    md = render_markdown(res, plots, tmp_path, setup=["setup line"])
    for heading in ("### (a)", "### (b)", "### (c)", "### (d)"):
        assert heading in md
    assert "](plots/eval_robustness.png)" in md and "setup line" in md and "Along training" in md
    assert md.count(CLASS_PROMPTS) >= 3  # in (a), (b) and (c)


def test_effective_robustness_known_answer() -> None:
    from emoji_report import effective_robustness, probe_trend

    # probes that lose nothing under the shift: the trend is y = x, so ER is simply new - in
    res = {"fewshot": {"category": {"summary": {"1": (0.2, 0.0), "4": (0.4, 0.0)},
                                    "new_style": {"1": (0.2, 0.0), "4": (0.4, 0.0)}}},
           "probe": {"in-style": {"acc1": 0.7}, "new-style": {"acc1": 0.7}}}
    slope, intercept = probe_trend(res)
    assert slope == pytest.approx(1.0) and intercept == pytest.approx(0.0, abs=1e-9)
    assert effective_robustness((slope, intercept), 0.5, 0.6) == pytest.approx(0.1)
    assert effective_robustness(None, 0.5, 0.6) is None
