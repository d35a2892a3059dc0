"""Zero-shot classifier construction, its cache, feature extraction and the feature cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from evalkit import byte_tokenizer, color_shard, tiny_model

from torchclip.evaluation.datasets import load_webdataset
from torchclip.evaluation.features import extract_image_features, model_fingerprint
from torchclip.evaluation.retrieval import caption_gallery, evaluate_retrieval
from torchclip.evaluation.templates import load_class_prompts
from torchclip.evaluation.zeroshot import (
    align_classnames,
    build_classifier,
    build_prompt_classifier,
    evaluate_zeroshot,
    hubness_penalty,
    zeroshot_logits,
)
from torchclip.tokenizer import Tokenizer


def test_classifier_is_renormalized_mean_of_normalized_prompts() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    templates = ["a {}.", "the {} here", "{}"]
    w = build_classifier(model, tok, ["cat", ["dog", "puppy"]], templates, cache_dir=False)
    assert w.shape == (32, 2)
    with torch.no_grad():
        def unit(texts: list[str]) -> torch.Tensor:
            return F.normalize(model.encode_text(tok(texts, context_length=24)), dim=-1)

        cat = F.normalize(unit([t.replace("{}", "cat") for t in templates]).mean(0), dim=0)
        dog_prompts = [t.replace("{}", n) for n in ("dog", "puppy") for t in templates]
        dog = F.normalize(unit(dog_prompts).mean(0), dim=0)
    torch.testing.assert_close(w[:, 0], cat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w[:, 1], dog, atol=1e-5, rtol=1e-5)


def test_class_prompts_one_list_is_the_template_ensemble_and_groups_weigh_the_same() -> None:
    model, tok = tiny_model(), byte_tokenizer()
    templates = ["a {}.", "the {} here", "{}"]
    flat = build_prompt_classifier(model, tok, [[t.replace("{}", "cat") for t in templates], ["dog", "a dog."]],
                                   cache_dir=False)
    torch.testing.assert_close(flat[:, 0], build_classifier(model, tok, ["cat"], templates, cache_dir=False)[:, 0],
                               atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        def unit(texts: list[str]) -> torch.Tensor:
            return F.normalize(model.encode_text(tok(texts, context_length=24)), dim=-1)

        one = F.normalize(unit(["a red cat."]).mean(0), dim=0)
        many = F.normalize(unit(["cat", "cats", "a cat", "kitten"]).mean(0), dim=0)
        expected = F.normalize(one + many, dim=0)
    grouped = build_prompt_classifier(model, tok, [[["a red cat."], ["cat", "cats", "a cat", "kitten"]]],
                                      cache_dir=False)
    torch.testing.assert_close(grouped[:, 0], expected, atol=1e-5, rtol=1e-5)
    pooled = build_prompt_classifier(model, tok, [["a red cat.", "cat", "cats", "a cat", "kitten"]], cache_dir=False)
    assert not torch.allclose(pooled, grouped, atol=1e-3)  # control: one flat list weighs each prompt the same
    for bad in ([], ["x", []], [[]], [["ok"], [""]], "cat"):
        with pytest.raises(ValueError):
            build_prompt_classifier(model, tok, [bad] if bad != "cat" else bad, cache_dir=False)


def test_class_prompts_cache_keys_the_grouping(tmp_path: Path) -> None:
    model, tok = tiny_model(), byte_tokenizer()
    grouped = build_prompt_classifier(model, tok, [[["a b"], ["b", "c", "d"]]], cache_dir=tmp_path)
    flat = build_prompt_classifier(model, tok, [["a b", "b", "c", "d"]], cache_dir=tmp_path)
    regrouped = build_prompt_classifier(model, tok, [[["a b", "b"], ["c", "d"]]], cache_dir=tmp_path)
    # same prompts, other grouping (also with as many groups): never the cached entry of another
    assert not torch.allclose(grouped, flat, atol=1e-3) and not torch.allclose(grouped, regrouped, atol=1e-3)
    assert torch.equal(grouped, build_prompt_classifier(model, tok, [[["a b"], ["b", "c", "d"]]], cache_dir=tmp_path))


def test_load_class_prompts_layouts_and_errors(tmp_path: Path) -> None:
    import json

    f = tmp_path / "cupl.json"
    f.write_text(json.dumps({"cat": ["a photo of a cat.", "a small pet."], "dog": [["a dog."], ["a puppy.", "a hound."]]}))
    assert load_class_prompts(f) == {"cat": [["a photo of a cat.", "a small pet."]],
                                     "dog": [["a dog."], ["a puppy.", "a hound."]]}
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"pets": {"cat": ["x"]}}))
    assert load_class_prompts(f"{nested}:pets") == {"cat": [["x"]]}
    for doc, words in [(["a", "b"], "JSON object"), ({"cat": []}, "class 'cat'"), ({"cat": "a cat"}, "class 'cat'"),
                       ({"cat": [["ok"], [1]]}, "class 'cat'"), ({}, "JSON object")]:
        f.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=words) as e:
            load_class_prompts(f)
        assert str(f) in str(e.value)  # the error names the file
    f.write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON file"):
        load_class_prompts(f)
    with pytest.raises(FileNotFoundError):
        load_class_prompts(tmp_path / "missing.json")


def test_evaluate_zeroshot_with_class_prompts(tmp_path: Path) -> None:
    ds = load_webdataset(color_shard(tmp_path / "s.tar", per_class=3), label_key="json:category")
    model, tok = tiny_model(), byte_tokenizer()
    prompts = {c: [f"a {c} thing.", f"{c}"] for c in ds.classnames}
    res = evaluate_zeroshot(model, ds, tok, class_prompts=prompts, cache_dir=False, progress=False)
    w = build_prompt_classifier(model, tok, [prompts[c] for c in ds.classnames], cache_dir=False)
    feats = extract_image_features(model, ds, cache_dir=False, progress=False)
    torch.testing.assert_close(res.logits, zeroshot_logits(feats, w))
    with pytest.raises(ValueError, match=rf"missing \['{ds.classnames[0]}'\]"):
        evaluate_zeroshot(model, ds, tok, class_prompts={c: ["x"] for c in ds.classnames[1:]}, cache_dir=False)
    with pytest.raises(ValueError, match=r"unknown \['purple'\]"):
        evaluate_zeroshot(model, ds, tok, class_prompts={**prompts, "purple": ["x"]}, cache_dir=False)
    with pytest.raises(ValueError, match="one or the other"):
        evaluate_zeroshot(model, ds, tok, classnames=list(ds.classnames), class_prompts=prompts, cache_dir=False)


def test_classifier_cache_hits_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny_model(), byte_tokenizer()
    w1 = build_classifier(model, tok, ["a", "b"], "ensemble", cache_dir=tmp_path)
    calls = []
    original = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda ids, **kw: calls.append(1) or original(ids, **kw))
    w2 = build_classifier(model, tok, ["a", "b"], "ensemble", cache_dir=tmp_path)
    assert torch.equal(w1, w2) and not calls  # served from disk
    build_classifier(model, tok, ["a", "c"], "ensemble", cache_dir=tmp_path)
    assert calls  # other prompts: recomputed
    calls.clear()
    with torch.no_grad():
        model.text.proj.mul_(torch.rand_like(model.text.proj) + 0.5)  # new weights: not the old entry
    w3 = build_classifier(model, tok, ["a", "b"], "ensemble", cache_dir=tmp_path)
    assert calls and not torch.allclose(w1, w3)


def test_logits_and_embedding_mismatch() -> None:
    w = F.normalize(torch.randn(8, 3), dim=0)
    feats = torch.randn(5, 8)
    logits = zeroshot_logits(feats, w)
    torch.testing.assert_close(logits, 100 * F.normalize(feats, dim=-1) @ w)
    with pytest.raises(ValueError, match="embedding sizes differ.*pre_projection"):
        zeroshot_logits(torch.randn(5, 16), w)


def test_hubness_penalty_is_csls_class_term() -> None:
    g = torch.Generator().manual_seed(0)
    w = F.normalize(torch.randn(6, 4, generator=g), dim=0)  # [E, C]
    bank = torch.randn(30, 6, generator=g) * 3  # unnormalized on purpose
    k = 5
    pen = hubness_penalty(w, bank, k)
    cos = F.normalize(bank, dim=-1) @ w  # [M, C]
    for c in range(4):  # brute force: mean of the k largest cosines of each class over the bank
        torch.testing.assert_close(pen[c], torch.sort(cos[:, c], descending=True).values[:k].mean())
    for chunk in (1, 4, 7, 30):  # read in pieces: the same k largest
        torch.testing.assert_close(hubness_penalty(w, bank, k, chunk=chunk), pen)
    feats = torch.randn(7, 6, generator=g)
    logits = zeroshot_logits(feats, w, penalty=pen)
    img = F.normalize(feats, dim=-1)
    r_img = (img @ w).topk(2, dim=1).values.mean(1, keepdim=True)  # CSLS's image term: same for every class
    csls = 2 * img @ w - pen - r_img
    torch.testing.assert_close(logits, 100 * (img @ w - pen / 2))
    assert torch.equal(logits.argmax(1), csls.argmax(1))


def test_hubness_penalty_demotes_a_hub() -> None:
    # class 0 is a hub, close to every bank image: it wins the image on raw cosine, class 1 after the penalty
    w = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, 0.0, 0.8]]), dim=1).t()  # [E=3, C=3]
    bank = torch.tensor([[1.0, 0.1, 0.1], [1.0, -0.1, 0.2], [1.0, 0.2, -0.1], [0.9, 0.0, 0.0]])
    img = torch.tensor([[0.9, 0.35, 0.0]])
    assert zeroshot_logits(img, w).argmax().item() == 0
    pen = hubness_penalty(w, bank, k=2)
    assert pen[0] > pen[1] and pen[0] > pen[2]
    assert zeroshot_logits(img, w, penalty=pen).argmax().item() == 1


def test_hubness_penalty_errors() -> None:
    w = F.normalize(torch.randn(8, 3), dim=0)
    with pytest.raises(ValueError, match="k=11 nearest bank images asked of a bank of 10"):
        hubness_penalty(w, torch.randn(10, 8), k=11)
    with pytest.raises(ValueError, match="k=0"):
        hubness_penalty(w, torch.randn(10, 8), k=0)
    with pytest.raises(ValueError, match="chunk=0: must be at least 1"):
        hubness_penalty(w, torch.randn(10, 8), k=2, chunk=0)
    with pytest.raises(ValueError, match="embedding sizes differ: bank features have 4 dims"):
        hubness_penalty(w, torch.randn(10, 4))
    with pytest.raises(ValueError, match=r"one value per class \(3\), got \(2,\)"):
        zeroshot_logits(torch.randn(5, 8), w, penalty=torch.zeros(2))


def test_align_classnames_errors() -> None:
    assert align_classnames(["x", "y"], {"x": "ex", "y": ["why", "wye"]}) == ["ex", ["why", "wye"]]
    with pytest.raises(ValueError, match=r"unknown class name\(s\) \['z'\]"):
        align_classnames(["x", "y"], {"x": "a", "y": "b", "z": "c"})
    with pytest.raises(ValueError, match="no prompt name"):
        align_classnames(["x", "y"], {"x": "a"})
    with pytest.raises(ValueError, match="3 class names for a dataset with 2"):
        align_classnames(["x", "y"], ["a", "b", "c"])


def test_evaluate_zeroshot_end_to_end(tmp_path: Path) -> None:
    ds = load_webdataset(color_shard(tmp_path / "s.tar", per_class=3), label_key="json:category")
    model, tok = tiny_model(), byte_tokenizer()
    res = evaluate_zeroshot(model, ds, tok, "bare", cache_dir=tmp_path / "c", progress=False)
    assert set(res.metrics) == {"acc1", "acc5", "mean_per_class_recall"}
    assert np.isnan(res.metrics["acc5"])  # 3 classes
    assert res.logits.shape == (9, 3) and res.confusion().sum() == 9
    # an "oracle" classifier built from the class-mean image features scores perfectly
    feats = extract_image_features(model, ds, cache_dir=tmp_path / "c", progress=False)
    means = torch.stack([F.normalize(feats[ds.labels == c], dim=-1).mean(0) for c in range(3)])
    pred = zeroshot_logits(feats, F.normalize(means, dim=-1).t()).argmax(1).numpy()
    assert (pred == ds.labels).mean() == 1.0


def test_feature_cache_and_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_webdataset(color_shard(tmp_path / "s.tar", per_class=2))
    model = tiny_model()
    model.train()
    a = extract_image_features(model, ds, cache_dir=tmp_path, progress=False)
    assert model.training  # the caller's mode comes back
    assert a.shape == (6, 32) and len(list((tmp_path / "features").iterdir())) == 1
    monkeypatch.setattr(model, "encode_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    b = extract_image_features(model, ds, cache_dir=tmp_path, progress=False)
    assert torch.equal(a, b)
    monkeypatch.undo()
    pre = extract_image_features(model, ds, kind="pre_projection", cache_dir=False, progress=False)
    assert pre.shape == (6, 64)  # vision width, before the projection
    with torch.no_grad():
        torch.testing.assert_close(pre @ model.visual.proj, a, atol=1e-5, rtol=1e-5)
    rn = tiny_model(resnet=True)
    rn_emb = extract_image_features(rn, ds, cache_dir=False, progress=False)
    rn_pre = extract_image_features(rn, ds, kind="pre_projection", batch_size=4, cache_dir=False, progress=False)
    assert rn_pre.shape == (6, 256)
    with torch.no_grad():
        torch.testing.assert_close(rn.visual.attn_pool.out_proj(rn_pre), rn_emb, atol=1e-4, rtol=1e-4)
    fp = model_fingerprint(model)
    with torch.no_grad():
        model.visual.proj.mul_(2)
    assert model_fingerprint(model) != fp


def test_uncached_transform_without_stable_repr(tmp_path: Path) -> None:
    ds = load_webdataset(color_shard(tmp_path / "s.tar", per_class=1))
    model = tiny_model()
    from torchclip.transforms import image_transform

    base = image_transform(32)
    extract_image_features(model, ds, lambda img: base(img), cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "features").exists()  # a lambda's repr holds an address: never cached


def test_retrieval_end_to_end_and_gallery(tmp_path: Path) -> None:
    texts, pos = caption_gallery([["a", "b"], ["b"], ["c"]])
    assert texts == ["a", "b", "c"] and pos.tolist() == [[True, True, False], [False, True, False],
                                                          [False, False, True]]
    with pytest.raises(ValueError, match="no caption"):
        caption_gallery([["a"], []])
    ds = load_webdataset(color_shard(tmp_path / "s.tar", per_class=2))
    res = evaluate_retrieval(tiny_model(), ds, byte_tokenizer(), ks=(1, 5), cache_dir=False, progress=False)
    assert res.similarity.shape == (6, len(res.texts)) and 0 <= res.metrics["text_retrieval_recall@1"] <= 1


def test_tokenizer_mismatch_is_named() -> None:
    model = tiny_model()
    big = Tokenizer([("a", "b")], context_length=24)  # 515 ids: the model's table has 514
    with pytest.raises(ValueError, match="vocabulary"):
        build_classifier(model, big, ["x"], "bare", cache_dir=False)
