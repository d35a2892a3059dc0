"""Run logs: JSONL metrics (always), TensorBoard (when installed), a tqdm progress bar and plain messages.

Only rank 0 writes. On resume, records past the resumed step (written by the interrupted run after its last
checkpoint) are dropped, so ``metrics.jsonl`` reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_metrics", "format_eval_table"]

# column order of the evaluation table; other metrics follow in the order they come
_COLUMNS = {"classes": "classes", "acc1": "acc1", "acc5": "acc5", "acc10": "acc10",
            "mean_per_class_recall": "mean recall", "t2i_R@1": "t2i R@1", "t2i_R@5": "t2i R@5",
            "t2i_R@10": "t2i R@10"}


class MetricsLogger:
    def __init__(self, out: Path, *, enabled: bool = True, tensorboard: bool = True, progress: bool = True,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self._tb: Any = None
        self._bar: Any = None
        self._progress = progress
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        mode = "w" if resume_step is None else "a"  # a fresh run starts fresh logs, never another run's
        self._file = self.path.open(mode, encoding="utf-8")
        self._log = (out / "train.log").open(mode, encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self.info("tensorboard is not installed: logging to metrics.jsonl only (pip install tensorboard)")
            else:
                self._tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)

    def info(self, msg: str) -> None:
        """A human message: stderr (above the progress bar) and train.log."""
        if not self.enabled:
            return
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        rec = {"step": step, "kind": kind, "time": time.time(), **metrics}
        self._file.write(json.dumps(rec) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{kind}/{k}", v, step)
        if kind == "eval":
            self.info(f"step {step} zero-shot evaluation (%):\n{format_eval_table(metrics)}")

    def progress(self, step: int, total: int, last: dict[str, float]) -> None:
        if not (self.enabled and self._progress):
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=step - 1, unit="step", dynamic_ncols=True, file=sys.stderr)
        self._bar.update(step - self._bar.n)
        if last:
            self._bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}",
                                  samples_s=f"{last.get('samples_per_s', 0):.0f}", refresh=False)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._file.close()
        self._log.close()


def format_eval_table(metrics: dict[str, float]) -> str:
    """``{'<set>/<key>/<metric>': value}`` as an aligned table: one row per set and label key, metrics as
    percentages ("-" where undefined, e.g. acc10 with fewer than 10 classes)."""
    rows: dict[str, dict[str, float]] = {}
    for name, value in metrics.items():
        row, _, metric = name.rpartition("/")
        rows.setdefault(row or "-", {})[metric] = value
    names = list(_COLUMNS) + [m for r in rows.values() for m in r if m not in _COLUMNS]
    names = [m for m in dict.fromkeys(names) if any(m in r for r in rows.values())]
    heads = [_COLUMNS.get(m, m) for m in names]

    def cell(metric: str, value: float | None) -> str:
        if value is None or value != value:
            return "-"
        return f"{int(value)}" if metric == "classes" else f"{100 * value:.2f}"

    first = max([len("set/labels")] + [len(r) for r in rows])
    widths = [max(len(h), *(len(cell(m, r.get(m))) for r in rows.values())) for m, h in zip(names, heads)]
    lines = ["  " + "set/labels".ljust(first) + "".join(f"  {h:>{w}}" for h, w in zip(heads, widths))]
    for row, values in rows.items():
        lines.append("  " + row.ljust(first)
                     + "".join(f"  {cell(m, values.get(m)):>{w}}" for m, w in zip(names, widths)))
    return "\n".join(lines)


def read_metrics(path: str | Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (of one ``kind``, or all)."""
    recs = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [r for r in recs if kind is None or r.get("kind") == kind]
