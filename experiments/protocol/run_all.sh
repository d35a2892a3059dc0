#!/usr/bin/env bash
# The emoji protocol (issue #20): choose on train-concept splits, then final runs scored once on val.
cd /work/wt-exp
export PYTHONPATH=/work/wt-exp/src OMP_NUM_THREADS=1
PY=/work/main/.venv/bin/python
log=/work/exp/exp.log
while ! grep -q "== done3" /work/bench_logs/chain.log; do sleep 20; done
train() { name=$1; echo "start $name $(date +%T)" >> $log; /work/main/.venv/bin/torchclip train --config runs/protocol/configs/$name.yaml --overwrite > /work/exp/$name.log 2>&1; echo "end $name rc=$? $(date +%T)" >> $log; }
peer() { seed=$1; echo "start peer-seed$seed $(date +%T)" >> $log
  /work/main/.bench-venv/bin/python benchmarks/openclip_shim.py -m open_clip_train.main --dataset-type webdataset \
    --train-data '../shared/data/emoji/google-train.tar::../shared/data/emoji/twitter-train.tar' \
    --train-num-samples 2648 --model local-dir:runs/peer/model --batch-size 128 --lr 5e-4 --wd 0.2 \
    --warmup 50 --epochs 26 --workers 1 --precision fp32 --seed $seed --save-frequency 26 --logs runs/peer/logs \
    --name peer26-seed$seed > /work/exp/peer-seed$seed.log 2>&1
  echo "end peer-seed$seed rc=$? $(date +%T)" >> $log; }
score() { $PY experiments/emoji_protocol.py score "$1" --sets $2 --label "$3" --json runs/protocol/$2.json "${@:4}" >> $log 2>&1; }

# 1. selection: candidates on the fit concepts, scored on the held-out train concepts (select)
train sel-lit-locked & train sel-lit-unlock2 & wait
train sel-lit-mlp & train sel-scratch & wait
train sel-lit-color  # colour jitter + grayscale, added after the first choice (BENCHMARKS.md)
for n in sel-lit-locked sel-lit-unlock2 sel-lit-mlp sel-scratch sel-lit-color; do score runs/protocol/$n select $n; done
# the rule, fixed before any run: the LiT candidate with the highest mean of in-style, openmoji and
# fluent-flat category top-1 and in-style name R@1 on the select concepts
chosen=$($PY - <<'PYEOF'
import json
r = json.load(open("runs/protocol/select.json"))
keys = ["in-style/category/acc1", "openmoji/category/acc1", "fluent-flat/category/acc1", "in-style/name/acc1"]
cands = {k: sum(r[k][m] for m in keys) / len(keys) for k in r if k.startswith("sel-lit")}
print(max(cands, key=cands.get))
PYEOF
)
echo "chosen $chosen $(date +%T)" >> $log
$PY - "$chosen" <<'PYEOF'
import sys, yaml
name = sys.argv[1]
cfg = yaml.safe_load(open(f"runs/protocol/configs/{name}.yaml"))
full = yaml.safe_load(open("configs/emoji-lit.yaml"))
for seed in (0, 1, 2):
    c = dict(cfg)
    c["data"] = dict(cfg["data"], train=full["data"]["train"], num_samples=2648, shuffle_buffer=2648)
    c["eval"] = dict(cfg["eval"], sets=full["eval"]["sets"])
    c["run"] = dict(cfg["run"], output_dir=f"runs/protocol/final-lit-seed{seed}", seed=seed)
    yaml.safe_dump(c, open(f"runs/protocol/configs/final-lit-seed{seed}.yaml", "w"), sort_keys=False)
PYEOF
# 2. final runs on all train concepts, each scored once on val
( peer 2; train final-scratch-seed2 ) &
( train final-lit-seed0; train final-lit-seed1; train final-lit-seed2; train final-scratch-seed0; train final-scratch-seed1 ) &
wait
for s in 0 1 2; do score runs/protocol/final-lit-seed$s val lit/seed$s; score runs/protocol/final-scratch-seed$s val scratch/seed$s; done
score runs/peer/logs/peer26-seed2/checkpoints/epoch_26.pt val peer/seed2 --activation gelu --tokenizer ../shared/fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz
echo "done $(date +%T)" >> $log
