"""Run logs: JSONL metrics (always), TensorBoard (when installed), a tqdm progress bar and plain messages.

Only rank 0 writes. On resume, records past the resumed step (written by the interrupted run after its last
checkpoint) are dropped, so ``metrics.jsonl`` reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_metrics", "format_eval_table", "environment", "record_environment"]

# what a run's numbers depend on beyond its config; versions read from package metadata, nothing imported
_PACKAGES = ("torchclip", "torch", "numpy", "pillow", "safetensors", "tokenizers", "transformers", "webdataset")

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


def environment(device: Any, precision: Any, world_size: int) -> dict[str, Any]:
    """The machine and packages a run trained on. The same config and seed give the same weights on one
    machine, not across machines (CPU kernels under bf16, package versions), so a run keeps this beside its
    config."""
    from importlib import metadata

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    packages = {}
    for name in _PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    gpu = torch.cuda.get_device_name(device) if getattr(device, "type", None) == "cuda" else None
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "device": str(device), "gpu": gpu, "cuda": torch.version.cuda if gpu else None,
            "precision": str(precision or torch.float32), "world_size": world_size, "packages": packages}


def record_environment(out: Path, step: int, env: dict[str, Any]) -> Path:
    """Append ``env`` for a (re)start at ``step`` to ``out/environment.json``, a list with one entry per start,
    so a run resumed on another machine says so. A fresh run (step 0) starts the list anew."""
    path = out / "environment.json"
    entries: list[Any] = []
    if step > 0 and path.exists():
        try:
            entries = json.loads(path.read_text())
        except ValueError:
            entries = []
        entries = entries if isinstance(entries, list) else []
    entries.append({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **env})
    path.write_text(json.dumps(entries, indent=1) + "\n")
    return path
