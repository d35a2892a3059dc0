"""Run OpenCLIP (the peer) on a CPU-only torch: define torchvision's NMS op schemas before torchvision loads.

PyPI's torchvision 0.28 wheel is a CUDA build; with the CPU torch 2.13 wheel its ``_C`` extension cannot
load, and ``torchvision/_meta_registrations.py`` then fails registering fake kernels for ``nms``/``qnms``
(ops that do not exist without ``_C``). OpenCLIP never calls them, so declaring their schemas lets
torchvision (and OpenCLIP's transforms) import. Use: ``python benchmarks/openclip_shim.py -m MODULE args``
or ``import openclip_shim`` before ``import open_clip``.
"""

from __future__ import annotations

import runpy
import sys

import torch


def install() -> None:
    """Declare the two ops unless torchvision's own extension already did."""
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (a second install, or a working torchvision)
        return
    globals()["_LIB"] = lib  # keep the library object alive, or the definitions are dropped


def patch_webdataset_eof() -> None:
    """OpenCLIP issue #935: webdataset yields an end-of-shard marker ``{}`` that OpenCLIP's grouping reads as
    a file (``KeyError: 'fname'``). The maintainers' fix passes ``eof_value=None``; applied here by
    replacing the module-level function, which ``get_wds_dataset`` looks up at call time."""
    import open_clip_train.data as ocd

    def tarfile_to_samples_nothrow(src, handler=ocd.log_and_continue):  # noqa: ANN001, ANN202
        streams = ocd.url_opener(src, handler=handler)
        files = ocd.tar_file_expander(streams, handler=handler, eof_value=None)
        return ocd.group_by_keys_nothrow(files, handler=handler)

    ocd.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow


install()

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "-m":
        raise SystemExit("usage: python benchmarks/openclip_shim.py -m MODULE [args...]")
    module = sys.argv[2]
    sys.argv = [module] + sys.argv[3:]
    if module.startswith("open_clip_train"):
        patch_webdataset_eof()
    runpy.run_module(module, run_name="__main__", alter_sys=True)
