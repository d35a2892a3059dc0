#!/usr/bin/env bash
# The emoji protocol (issue #20), one command from the repository root (../shared beside it, `make venv`
# and `make peers` done): choose a recipe on held-out *train* concepts, then train the final recipes on all
# train concepts with three seeds each and score every final run once on the val concepts.
# About 12 hours on 2 cores (two 1-thread runs at a time); logs in runs/protocol/logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python}
PEER_PY=${PEER_PY:-.bench-venv/bin/python}
P=experiments/protocol
logs=runs/protocol/logs
mkdir -p $logs
say() { echo "$* $(date +%T)" | tee -a $logs/protocol.log; }
train() { say "start $1"; $PY -m torchclip train --config "$2" --overwrite > $logs/$1.log 2>&1; say "end $1"; }
score() { $PY experiments/emoji_protocol.py score "$1" --sets $2 --label "$3" --json runs/protocol/$2.json "${@:4}" \
          >> $logs/protocol.log 2>&1; }
peer() {  # OpenCLIP's own trainer, same image tower size (peer_model) and step budget, fp32
  say "start peer-seed$1"
  $PEER_PY benchmarks/openclip_shim.py -m open_clip_train.main --dataset-type webdataset \
    --train-data '../shared/data/emoji/google-train.tar::../shared/data/emoji/twitter-train.tar' \
    --train-num-samples 2648 --model local-dir:$P/peer_model --batch-size 128 --lr 5e-4 --wd 0.2 \
    --warmup 50 --epochs 26 --workers 1 --precision fp32 --seed $1 --save-frequency 26 --logs runs/peer/logs \
    --name peer26-seed$1 > $logs/peer-seed$1.log 2>&1
  say "end peer-seed$1"
}

# 0. the select split: every fifth concept group of the train shards, all its styles
$PY experiments/emoji_protocol.py split --out runs/emoji-protocol/data >> $logs/protocol.log

# 1. candidates train on the other train concepts and are scored on the select concepts (val is never read)
sel=(sel-lit-locked sel-lit-unlock2 sel-lit-mlp sel-scratch sel-lit-color sel-lit-style sel-lit-locked-seed1
     sel-lit-style-seed1 sel-lit-ema sel-lit-ema-seed1 sel-lit-rconv sel-lit-rconv-seed1 sel-lit-zoom
     sel-lit-zoom-seed1 sel-lit-zoom-rconv sel-lit-zoom-rconv-seed1 sel-lit-style-rconv sel-lit-style-rconv-seed1
     sel-lit-style-rconv-ema sel-lit-style-rconv-ema-seed1)
for ((i = 0; i < ${#sel[@]}; i += 2)); do
  train ${sel[i]} $P/${sel[i]}.yaml &
  if ((i + 1 < ${#sel[@]})); then train ${sel[i+1]} $P/${sel[i+1]}.yaml & fi
  wait
done
for n in "${sel[@]}"; do score runs/protocol/$n select $n; done
# the category prompts (emoji_prompts.choose): the strategy with the highest mean category top-1 over every
# LiT select checkpoint; then the rule (emoji_protocol.choose): the LiT candidate with the highest mean of
# in-style, openmoji and fluent-flat category top-1 (under those prompts) and in-style name R@1, averaged
# over its seeds
# The strategy was chosen on the 11 LiT checkpoints that existed then (the zoom candidates came after it);
# with all 19, see BENCHMARKS.md.
first=(sel-lit-locked sel-lit-unlock2 sel-lit-mlp sel-lit-color sel-lit-style sel-lit-locked-seed1
       sel-lit-style-seed1 sel-lit-ema sel-lit-ema-seed1 sel-lit-rconv sel-lit-rconv-seed1)
$PY experiments/emoji_prompts.py score "${first[@]/#/runs/protocol/}" --sets select \
  --json runs/protocol/prompts-select-first.json >> $logs/protocol.log 2>&1
strategy=$($PY experiments/emoji_prompts.py choose runs/protocol/prompts-select-first.json 2>> $logs/protocol.log)
lit=(); for n in "${sel[@]}"; do [[ $n == sel-lit-* ]] && lit+=(runs/protocol/$n); done
$PY experiments/emoji_prompts.py score "${lit[@]}" --sets select --json runs/protocol/prompts-select.json \
  >> $logs/protocol.log 2>&1
say "prompts $strategy"
$PY experiments/emoji_prompts.py write "$strategy" --out runs/protocol/category_prompts.json >> $logs/protocol.log
chosen=$($PY experiments/emoji_protocol.py choose runs/protocol/select.json --prompts runs/protocol/prompts-select.json \
         --strategy "$strategy" 2>> $logs/protocol.log)
say "chosen $chosen"

# 1b. test-time trimming of the white margin (experiments/emoji_trim.py): every LiT select checkpoint scored on
# trimmed select images; adopted only if the paired 95% interval of the rule-value difference lies above zero
trimscore() { $PY experiments/emoji_protocol.py score runs/protocol/$1 --sets $2 --folder runs/protocol/trim-$2 \
              --label "${3:-$1}" --json runs/protocol/$2-trim.json "${@:4}" >> $logs/protocol.log 2>&1; }
$PY experiments/emoji_trim.py write --sets select --out runs/protocol/trim-select >> $logs/protocol.log
for n in "${lit[@]}"; do trimscore "${n#runs/protocol/}" select; done
$PY experiments/emoji_prompts.py score "${lit[@]}" --sets select --folder runs/protocol/trim-select \
  --json runs/protocol/prompts-select-trim.json >> $logs/protocol.log 2>&1
trim=$($PY experiments/emoji_trim.py choose runs/protocol/select.json runs/protocol/select-trim.json \
       --prompts runs/protocol/prompts-select.json runs/protocol/prompts-select-trim.json 2>> $logs/protocol.log)
say "test-time trimming: $trim"
# 1c. training on trimmed images too: 3 seeds of it against 3 of the chosen recipe (its third seed trains now),
# all scored on trimmed select images; the chosen recipe stays unless the candidate clears the seed noise
$PY experiments/emoji_trim.py write --sets fit --out runs/protocol/trim-fit >> $logs/protocol.log
train $chosen-seed2 $P/$chosen-seed2.yaml & train $chosen-trim $P/$chosen-trim.yaml & wait
train $chosen-trim-seed1 $P/$chosen-trim-seed1.yaml & train $chosen-trim-seed2 $P/$chosen-trim-seed2.yaml & wait
for n in $chosen-seed2 $chosen-trim $chosen-trim-seed1 $chosen-trim-seed2; do
  trimscore $n select
  $PY experiments/emoji_prompts.py score runs/protocol/$n --sets select --folder runs/protocol/trim-select \
    --json runs/protocol/prompts-select-trim.json >> $logs/protocol.log 2>&1
done
trained=$($PY experiments/emoji_trim.py compare runs/protocol/select-trim.json \
          --prompts runs/protocol/prompts-select-trim.json $chosen-trim $chosen 2>> $logs/protocol.log)
say "trained on trimmed images: $trained"
# 1d. name prompts (experiments/emoji_names.py): the training templates averaged against "an emoji of {}.",
# paired over the same LiT checkpoints on trimmed select images; it was not adopted, so the finals keep the one
# template
$PY experiments/emoji_names.py score "${lit[@]}" runs/protocol/$chosen-seed2 --sets select \
  --folder runs/protocol/trim-select --json runs/protocol/names-select-trim.json >> $logs/protocol.log 2>&1
say "name prompts: $($PY experiments/emoji_names.py choose runs/protocol/names-select-trim.json 2>> $logs/protocol.log)"
# 1e. the text tower's last 2 layers trained, aimed at names: 3 seeds against the chosen recipe's 3 on trimmed
# select images (emoji_names.py compare); it was not adopted, so the finals keep the locked text tower
for s in "" -seed1 -seed2; do train $chosen-unlock2$s $P/$chosen-unlock2$s.yaml & done; wait
for s in "" -seed1 -seed2; do
  trimscore $chosen-unlock2$s select
  $PY experiments/emoji_prompts.py score runs/protocol/$chosen-unlock2$s --sets select \
    --folder runs/protocol/trim-select --json runs/protocol/prompts-select-trim.json >> $logs/protocol.log 2>&1
done
say "text tower's last 2 layers: $($PY experiments/emoji_names.py compare runs/protocol/select-trim.json \
     --prompts runs/protocol/prompts-select-trim.json $chosen-unlock2 $chosen 2>> $logs/protocol.log)"
# 1f. trimming turned out not adopted (emoji_trim.py choose, with Student's t), so the name rules are
# re-applied on plain select images, and the hubness correction (a bank of the fit images) is tried there
lit+=(runs/protocol/$chosen-seed2 runs/protocol/$chosen-unlock2 runs/protocol/$chosen-unlock2-seed1
      runs/protocol/$chosen-unlock2-seed2)
$PY experiments/emoji_names.py score "${lit[@]}" --sets select --bank runs/emoji-protocol/data \
  --json runs/protocol/names-select.json >> $logs/protocol.log 2>&1
for n in $chosen-seed2 $chosen-unlock2 $chosen-unlock2-seed1 $chosen-unlock2-seed2; do  # plain select images
  score runs/protocol/$n select $n
  $PY experiments/emoji_prompts.py score runs/protocol/$n --sets select --json runs/protocol/prompts-select.json \
    >> $logs/protocol.log 2>&1
done
say "name prompts, plain: $($PY experiments/emoji_names.py choose runs/protocol/names-select.json 2>> $logs/protocol.log)"
say "last 2 layers, plain: $($PY experiments/emoji_names.py compare runs/protocol/select.json \
     --prompts runs/protocol/prompts-select.json $chosen-unlock2 $chosen 2>> $logs/protocol.log)"
names=$($PY experiments/emoji_names.py hubness runs/protocol/names-select.json --prompts single 2>> $logs/protocol.log)
say "name scores: $names"
# 1g. every caption keeps the name (data.name_dropout 0): 5 seeds against 5 of the chosen recipe, plain select
# images, the hubness-corrected name score
train $chosen-seed3 $P/$chosen-seed3.yaml & train $chosen-names $P/$chosen-names.yaml & wait
train $chosen-names-seed1 $P/$chosen-names-seed1.yaml & train $chosen-names-seed2 $P/$chosen-names-seed2.yaml & wait
train $chosen-names-seed3 $P/$chosen-names-seed3.yaml & train $chosen-names-seed4 $P/$chosen-names-seed4.yaml & wait
train $chosen-seed4 $P/$chosen-seed4.yaml
for n in $chosen-seed3 $chosen-seed4 $chosen-names $chosen-names-seed{1,2,3,4}; do
  score runs/protocol/$n select $n
  $PY experiments/emoji_prompts.py score runs/protocol/$n --sets select --json runs/protocol/prompts-select.json \
    >> $logs/protocol.log 2>&1
  $PY experiments/emoji_names.py score runs/protocol/$n --sets select --bank runs/emoji-protocol/data \
    --json runs/protocol/names-select.json >> $logs/protocol.log 2>&1
done
kept=$($PY experiments/emoji_names.py compare runs/protocol/select.json --prompts runs/protocol/prompts-select.json \
       --names runs/protocol/names-select.json $chosen-names $chosen 2>> $logs/protocol.log)
say "name dropout 0: $kept"
[[ $kept == "$chosen-names" ]] && trained=$kept
# 1h. the text tower locked whole (model.text_proj none, embed_dim 384: no head, so the image tower learns to
# land in MiniLM's own space, and a head fitted to 2,062 captions cannot bend what MiniLM knows about unseen
# words). Rule, fixed here before any of its runs trained (experiments/emoji_head.py): 5 seeds against the
# chosen recipe's 5, plain select images; the four numbers of the rule value (category top-1 with the chosen
# class prompts in-style, openmoji and fluent-flat; in-style name R@1 hubness-corrected), each recipe's mean
# over its seeds. Adopted only if the 95% bootstrap interval of the rule-value difference, resampling each
# recipe's seeds and the select concept groups together (2,000 rounds), lies above zero; then, and only
# then, its 5 final seeds train on all train concepts and are scored on val once.
for s in "" -seed1 -seed2 -seed3 -seed4; do
  train $chosen-nohead$s $P/$chosen-nohead$s.yaml &
  [[ $s == -seed1 || $s == -seed3 || $s == -seed4 ]] && wait
done
$PY experiments/emoji_head.py hits runs/protocol/$chosen{,-seed1,-seed2,-seed3,-seed4} \
  runs/protocol/$chosen-nohead{,-seed1,-seed2,-seed3,-seed4} --json runs/protocol/hits-select-head.json \
  >> $logs/protocol.log 2>&1
kept=$($PY experiments/emoji_head.py compare runs/protocol/hits-select-head.json $chosen-nohead $chosen --out benchmarks/results_emoji_head.json \
       2>> $logs/protocol.log)
say "no text head: $kept"
[[ $kept == "$chosen-nohead" ]] && trained=$kept
# 1i. every patch seen in training (model.patch_dropout 0; the recipe drops half, a FLIP setting #4 chose on
# the val concepts for a from-scratch model that memorised its 2,648 pairs, while the LiT recipe ends training
# at a loss near 3.5). Rule, fixed here before any of its runs trained: the same as 1h (emoji_head.py compare,
# 5 seeds against the chosen recipe's 5), decided only if 1h kept the chosen recipe; then, and only then, its 5
# final seeds train on all train concepts and are scored on val once.
if [[ $trained == "$chosen" ]]; then
  for s in "" -seed1 -seed2 -seed3 -seed4; do
    train $chosen-fullpatch$s $P/$chosen-fullpatch$s.yaml &
    [[ $s == -seed1 || $s == -seed3 || $s == -seed4 ]] && wait
  done
  $PY experiments/emoji_head.py hits runs/protocol/$chosen-fullpatch{,-seed1,-seed2,-seed3,-seed4} \
    --json runs/protocol/hits-select-head.json >> $logs/protocol.log 2>&1
  kept=$($PY experiments/emoji_head.py compare runs/protocol/hits-select-head.json $chosen-fullpatch $chosen --out benchmarks/results_emoji_head.json \
         2>> $logs/protocol.log)
  say "every patch: $kept"
  [[ $kept == "$chosen-fullpatch" ]] && trained=$kept
fi
# 1i+. cross-validation over the train concepts, measured after 1i and choosing nothing (emoji_head.py cv): the
# chosen recipe and every-patch, one run (seed 0) on each of folds 1-4 beside their select runs (fold 0)
for k in 1 2 3 4; do
  $PY experiments/emoji_protocol.py split --fold $k --out runs/emoji-protocol/fold$k >> $logs/protocol.log
  train cv-${chosen#sel-}-fold$k $P/cv-${chosen#sel-}-fold$k.yaml &
  train cv-${chosen#sel-}-fullpatch-fold$k $P/cv-${chosen#sel-}-fullpatch-fold$k.yaml & wait
  $PY experiments/emoji_head.py hits runs/protocol/cv-${chosen#sel-}{,-fullpatch}-fold$k \
    --folder runs/emoji-protocol/fold$k --json runs/protocol/hits-cv.json >> $logs/protocol.log 2>&1
done
$PY experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
  ${chosen#sel-}-fullpatch ${chosen#sel-} --out benchmarks/results_emoji_head.json >> $logs/protocol.log 2>&1
# A lever under the cross-validated rule (1j on): its select run and one run per fold (seed 0), hits, then
# emoji_head.py cv against the chosen recipe; sets $trained to the candidate if the rule keeps it.
cv_lever() {  # suffix, what to say
  local c=$chosen-$1 f=cv-${chosen#sel-}-$1
  train $c $P/$c.yaml & train $f-fold1 $P/$f-fold1.yaml & wait
  train $f-fold2 $P/$f-fold2.yaml & train $f-fold3 $P/$f-fold3.yaml & wait
  train $f-fold4 $P/$f-fold4.yaml
  $PY experiments/emoji_head.py hits runs/protocol/$c --json runs/protocol/hits-select-head.json >> $logs/protocol.log 2>&1
  for k in 1 2 3 4; do
    $PY experiments/emoji_head.py hits runs/protocol/$f-fold$k --folder runs/emoji-protocol/fold$k \
      --json runs/protocol/hits-cv.json >> $logs/protocol.log 2>&1
  done
  kept=$($PY experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
         ${c#sel-} ${chosen#sel-} --out benchmarks/results_emoji_head.json 2>> $logs/protocol.log)
  say "$2: $kept"
  [[ $kept == "${c#sel-}" ]] && trained=$c
  return 0
}
# 1j. three patches in four dropped in training (model.patch_dropout 0.75): over the folds, dropping none cost
# openmoji categories 2.5 points, so more dropout may buy new styles. Rule, fixed here before any of its runs
# trained, the cross-validated one (emoji_head.py cv): one run (seed 0) on each of the 5 folds of the train
# concepts, paired with the chosen recipe's run on that fold; adopted only if the 95% t-interval of the five
# per-fold rule-value differences lies above zero. Decided only if the chosen recipe is still in force; then,
# and only then, its 5 final seeds train on all train concepts and are scored on val once.
[[ $trained == "$chosen" ]] && cv_lever pd75 "patch dropout 0.75"
# 1k. twice the learning rate (optim.lr 0.002; the recipe's 0.001 was chosen in #4 for a model trained from
# scratch on both sides, never for LiT): the chosen recipe ends training at a loss near 3.5 against log(128) =
# 4.85, still falling while the rate decays to zero, so the image tower is underfitted at 572 steps. Rule, fixed
# here before any of its runs trained: the cross-validated one of 1j (one run per fold, seed 0, paired with the
# chosen recipe's run on that fold; adopted only if the 95% t-interval of the five per-fold rule-value
# differences lies above zero). Decided only if the chosen recipe is still in force; then, and only then, its
# 5 final seeds train on all train concepts and are scored on val once.
[[ $trained == "$chosen" ]] && cv_lever lr2 "learning rate 0.002"
# 1l. zoom-out added to the chosen recipe (data.zoom_out 0.5, side 0.6-1.0, as the select candidates of step 1
# drew it): OpenMoji and Fluent draw their emoji at 0.85-0.88 of the frame against 0.95-1.0 for the two training
# styles, and over the folds the chosen recipe never predicts "Smileys & Emotion" for an OpenMoji image. Not blind
# to val: val had been read with test-time trimming, which showed scale to matter most for OpenMoji. The decision
# reads train concepts only. Rule, fixed here before any of its runs trained: the cross-validated one of 1j.
# Decided only if the chosen recipe is still in force; then, and only then, its 5 final seeds train on all train
# concepts and are scored on val once.
[[ $trained == "$chosen" ]] && cv_lever zoom "zoom-out"
# 1m. half the learning rate (optim.lr 0.0005, the peer's): in 1k's runs twice the rate ended training at a
# higher loss (3.69 against 3.50 on select), so the recipe's rate may already be past the best. Rule, fixed here
# before any of its runs trained: the cross-validated one of 1j, decided only if the chosen recipe is still in
# force; then, and only then, its 5 final seeds train on all train concepts and are scored on val once.
[[ $trained == "$chosen" ]] && cv_lever lr05 "learning rate 0.0005"
# 1n. zoom-out to side 0.8-1.0 only (data.zoom_out_scale): 1l's side 0.6-1.0 bought OpenMoji categories 6 points
# over the folds and cost in-style categories 3.75. OpenMoji and Fluent draw at 0.85-0.88 of the frame, so sides
# of 0.8-1.0 cover the gap with less shrinking of the in-style pictures. Chosen after 1l on the same folds (the
# note counts it as a fifth try on them). Rule, fixed here before any of its runs trained: the cross-validated
# one of 1j, decided only if the chosen recipe is still in force; then, and only then, its 5 final seeds train
# on all train concepts and are scored on val once.
[[ $trained == "$chosen" ]] && cv_lever zoom08 "zoom-out to 0.8"
# 1o. zoom-out to 0.8-1.0 with every caption keeping the name (data.name_dropout 0): over the folds 1n gained the
# new-style categories (+2.85 openmoji, +2.09 fluent-flat) and lost names (-0.78), while in 1g name dropout 0 had
# gained names (+1.06 on select) and lost categories. Chosen after 1n on the same folds (a sixth try on them).
# Rule, fixed here before any of its runs trained: the cross-validated one of 1j, decided only if the chosen
# recipe is still in force; then, and only then, its 5 final seeds train on all train concepts and are scored
# on val once.
[[ $trained == "$chosen" ]] && cv_lever zoom08-names "zoom-out to 0.8, names kept"
# 1p. soft targets (optim.soft_targets 0.17): each image's target is the softmax of its caption's MiniLM
# similarity to the batch's captions, so what the locked text tower knows of which concepts are alike reaches
# the image tower; every lever so far changed the images or the schedule, none the loss. τ was read off the fit
# captions before any run (experiments/emoji_soft_targets.py: the grid value nearest half of each target's mass
# on identical captions). Not blind to val: val results of the chosen recipe were known. Rule, fixed here before
# any of its runs trained: the cross-validated one of 1j (a seventh try on the same folds), decided only if the
# chosen recipe is still in force; then, and only then, its 5 final seeds train on all train concepts and are
# scored on val once.
# (Its runs were paired with the chosen recipe's fold runs trained again on a fresh checkout: emoji_head.py cv
# --retrained 2026-12-08, by hand. This script, run from nothing, trains those fold runs once, in 1i+.)
[[ $trained == "$chosen" ]] && cv_lever soft17 "soft targets 0.17"
# 1q. the sigmoid loss (optim.loss siglip, SigLIP's start: scale 10, bias -10): argued from the SigLIP paper
# (Zhai et al. 2023), where it beats the softmax loss most at small batches (this recipe's is 128) and with a
# locked text tower, not from these folds (an eighth lever on them). Rule, fixed here before any of its runs
# trained: the cross-validated one of 1j, paired with the chosen recipe's fold runs trained on the same machine
# (2026-12-08, as 1p); decided only if the chosen recipe is still in force; then, and only then, its 5 final
# seeds train on all train concepts and are scored on val once.
[[ $trained == "$chosen" ]] && cv_lever siglip "sigmoid loss"
# 1r. a second look at the sigmoid loss (1q: +1.94 ± 2.75, not adopted): a second seed (run.seed 1) of it and of
# the chosen recipe on each of the 5 folds, all ten trained on this machine. 1q raised every category number, and
# the rule's noise over 5 folds (±2.75) is larger than any lever's effect so far; how much of that noise is the
# runs' (seeds) and how much the concepts' says whether more seeds or more folds would sharpen the rule. Rule, fixed
# here before any of these runs trained: per fold, the rule-value difference (sigmoid minus chosen) averaged over
# seeds 0 and 1; adopted only if the 95% t-interval of those five lies above zero. A second look after a miss: by
# the union bound a lever with no effect passes one of the two looks with probability at most 5% (one-sided)
# rather than 2.5%, and the note says so. Reported beside it and used for nothing: the seed-1 difference alone and
# each recipe's seed spread per fold. Decided only if the chosen recipe is still in force; then, and only then,
# its 5 final seeds train on all train concepts and are scored on val once.
cv_seed1() {  # the 5 fold runs of the chosen recipe (suffix s1) and of the lever (siglip-s1), seed 1
  local c=$chosen f=cv-${chosen#sel-}
  train $c-s1 $P/$c-s1.yaml & train $c-siglip-s1 $P/$c-siglip-s1.yaml & wait
  for k in 1 2 3 4; do
    train $f-s1-fold$k $P/$f-s1-fold$k.yaml & train $f-siglip-s1-fold$k $P/$f-siglip-s1-fold$k.yaml & wait
  done
  for s in s1 siglip-s1; do
    $PY experiments/emoji_head.py hits runs/protocol/$c-$s --json runs/protocol/hits-select-head.json >> $logs/protocol.log 2>&1
    for k in 1 2 3 4; do
      $PY experiments/emoji_head.py hits runs/protocol/$f-$s-fold$k --folder runs/emoji-protocol/fold$k \
        --json runs/protocol/hits-cv.json >> $logs/protocol.log 2>&1
    done
  done
  kept=$($PY experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
         ${c#sel-}-siglip+${c#sel-}-siglip-s1 ${c#sel-}+${c#sel-}-s1 --out benchmarks/results_emoji_head.json \
         2>> $logs/protocol.log)
  say "sigmoid loss, seeds 0 and 1: $kept"
  [[ $kept == ${c#sel-}-siglip+* ]] && trained=$c-siglip
  return 0
}
[[ $trained == "$chosen" ]] && cv_seed1
# 1s. every caption keeps the concept's name (data.name_dropout 0) on the recipe 1r adopted (the sigmoid loss).
# Argued from how the recipe's 0.3 was chosen: #4 picked it for a text tower learned from scratch, which memorised
# names; a locked MiniLM cannot, and the name is what the name target retrieves. Over the folds the sigmoid loss
# lost names (-0.84 ± 0.67), and its val name ratio is 1.52x against the 2x target. Not blind: 1g (+1.06 names,
# -0.68 rule value on select) and 1o (zoom-out with names kept, over the folds) are known, and val has been read
# for the sigmoid loss. Rule, fixed here before any of its runs trained: two seeds (0 and 1) on each of the 5
# folds, paired with the sigmoid-loss recipe's fold runs of the same seeds (trained on this machine: its select
# run, trained again here, gives the same loss at every logged step); per fold the rule-value difference
# averaged over the seeds; adopted only if the 95% t-interval of those five lies above zero. Then, and only
# then, its 5 final seeds train on all train concepts and are scored on val once.
cv_two_seeds() {  # suffix of the lever on the sigmoid-loss recipe, what to say
  local c=$chosen-siglip-$1 f=cv-${chosen#sel-}-siglip-$1
  train $c $P/$c.yaml & train $c-s1 $P/$c-s1.yaml & wait
  for k in 1 2 3 4; do train $f-fold$k $P/$f-fold$k.yaml & train $f-s1-fold$k $P/$f-s1-fold$k.yaml & wait; done
  $PY experiments/emoji_head.py hits runs/protocol/$c runs/protocol/$c-s1 --json runs/protocol/hits-select-head.json \
    >> $logs/protocol.log 2>&1
  for k in 1 2 3 4; do
    $PY experiments/emoji_head.py hits runs/protocol/$f-fold$k runs/protocol/$f-s1-fold$k --folder runs/emoji-protocol/fold$k \
      --json runs/protocol/hits-cv.json >> $logs/protocol.log 2>&1
  done
  local inc=${chosen#sel-}-siglip
  kept=$($PY experiments/emoji_head.py cv runs/protocol/hits-select-head.json runs/protocol/hits-cv.json \
         ${c#sel-}+${c#sel-}-s1 $inc+$inc-s1 --out benchmarks/results_emoji_head.json 2>> $logs/protocol.log)
  say "$2: $kept"
  [[ $kept == ${c#sel-}+* ]] && trained=$c
  return 0
}
[[ $trained == "$chosen-siglip" ]] && cv_two_seeds names "sigmoid loss, names kept"
final=final-${trained#sel-}
$PY - "$trained" "$final" <<'PYEOF'
import sys
import yaml
cfg = yaml.safe_load(open(f"experiments/protocol/{sys.argv[1]}.yaml"))
full = yaml.safe_load(open("configs/emoji-lit.yaml"))
for seed in (0, 1, 2, 3, 4):
    c = dict(cfg)
    c["data"] = dict(cfg["data"], train=full["data"]["train"], num_samples=2648, shuffle_buffer=2648)
    if sys.argv[1].endswith("-trim"):  # the candidate trained on trimmed shards; finals trim as they load
        c["data"]["trim_margin"] = True
    c["eval"] = dict(cfg["eval"], sets=full["eval"]["sets"])
    c["run"] = dict(cfg["run"], output_dir=f"runs/protocol/{sys.argv[2]}-seed{seed}", seed=seed)
    yaml.safe_dump(c, open(f"runs/protocol/{sys.argv[2]}-seed{seed}.yaml", "w"), sort_keys=False)
PYEOF

# 2. final runs on all train concepts, each scored once on val: LiT, from scratch, the OpenCLIP peer. Seeds 3
# and 4 of the LiT recipe and the peer were added after the 3-seed val results were read, to narrow the intervals.
( peer 0; peer 1; peer 2; peer 3; peer 4 ) &
( for s in 0 1 2 3 4; do train $final-seed$s runs/protocol/$final-seed$s.yaml; done
  for s in 0 1 2; do train final-scratch-seed$s $P/final-scratch-seed$s.yaml; done ) &
wait
$PY experiments/emoji_trim.py write --sets val --out runs/protocol/trim-val >> $logs/protocol.log
tok=../shared/fixtures/tokenizer/bpe_simple_vocab_16e6.txt.gz
for s in 0 1 2 3 4; do
  peer=runs/peer/logs/peer26-seed$s/checkpoints/epoch_26.pt
  score runs/protocol/$final-seed$s val ${final#final-}/seed$s
  score $peer val peer/seed$s --activation gelu --tokenizer $tok
  ((s < 3)) && score runs/protocol/final-scratch-seed$s val scratch/seed$s
  # name retrieval with and without the hubness correction (bank: the train shards both sides trained on)
  $PY experiments/emoji_names.py score runs/protocol/$final-seed$s --label ${final#final-}/seed$s --sets val \
    --bank ../shared/data/emoji --json runs/protocol/names-val.json >> $logs/protocol.log 2>&1
  $PY experiments/emoji_names.py score $peer --label peer/seed$s --activation gelu --tokenizer $tok --sets val \
    --bank ../shared/data/emoji --json runs/protocol/names-val.json >> $logs/protocol.log 2>&1
  # category zero-shot under every prompt strategy (the chosen one is the headline), LiT and the peer
  $PY experiments/emoji_prompts.py score runs/protocol/$final-seed$s --label ${final#final-}/seed$s --sets val \
    --json runs/protocol/prompts-val.json >> $logs/protocol.log 2>&1
  $PY experiments/emoji_prompts.py score $peer --label peer/seed$s --activation gelu --tokenizer $tok --sets val \
    --json runs/protocol/prompts-val.json >> $logs/protocol.log 2>&1
  # the same on trimmed images, if 1b adopted them
  if [[ $trim == adopt ]]; then
    trimscore $final-seed$s val ${final#final-}/seed$s
    $PY experiments/emoji_protocol.py score $peer --sets val --folder runs/protocol/trim-val --label peer/seed$s \
      --json runs/protocol/val-trim.json --activation gelu --tokenizer $tok >> $logs/protocol.log 2>&1
    for m in runs/protocol/$final-seed$s:${final#final-}/seed$s $peer:peer/seed$s; do
      extra=(); [[ ${m%%:*} == *.pt ]] && extra=(--activation gelu --tokenizer $tok)
      $PY experiments/emoji_prompts.py score ${m%%:*} --label ${m#*:} --sets val --folder runs/protocol/trim-val \
        --json runs/protocol/prompts-val-trim.json "${extra[@]}" >> $logs/protocol.log 2>&1
    done
  fi
done
$PY experiments/emoji_protocol.py summary runs/protocol/val.json | tee -a $logs/protocol.log
$PY experiments/emoji_prompts.py summary runs/protocol/prompts-val.json --strategy "$strategy" | tee -a $logs/protocol.log
if [[ $trim == adopt ]]; then
  $PY experiments/emoji_protocol.py summary runs/protocol/val-trim.json | tee -a $logs/protocol.log
  $PY experiments/emoji_prompts.py summary runs/protocol/prompts-val-trim.json --strategy "$strategy" | tee -a $logs/protocol.log
fi
say done
