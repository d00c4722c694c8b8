"""glibc heap settings for training (:mod:`ldns_fast.training.heap`): inside ``retained_heap`` a large tensor comes
from the heap, not from a fresh mmap, the settings are undone on exit, and the stage trainer runs its steps inside
it. Checked through glibc's own statistics (``mallinfo2``: bytes in mmapped blocks); skipped off glibc only."""
from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch

from ldns_fast.config import StageConfig
from ldns_fast.training import heap
from ldns_fast.training.loop import DistributedContext, StageTrainer

pytestmark = pytest.mark.skipif(heap.libc is None or not hasattr(heap.libc, "mallinfo2"),
                                reason="glibc >= 2.33 only (mallopt, mallinfo2)")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mmapped_share_of_big_tensor() -> float:
    """How much of a large tensor glibc serves by mmap (0 to 1). The tensor is 64 MiB larger than all free heap
    memory (``fordblks``), so no free heap chunk can serve it and, by default, it is mmapped (glibc's threshold is
    at most 32 MiB); its pages are never touched."""
    heap.libc.mallinfo2.restype = MallInfo2
    info = heap.libc.mallinfo2()
    size = info.fordblks + 64 * 2**20
    tensor = torch.empty(size, dtype=torch.uint8)
    grown = heap.libc.mallinfo2().hblkhd - info.hblkhd
    del tensor
    return grown / size


def test_retained_heap_serves_big_tensors_from_the_heap_and_undoes_it() -> None:
    assert mmapped_share_of_big_tensor() >= 1
    with heap.retained_heap() as active:
        assert active
        assert mmapped_share_of_big_tensor() == 0
    assert mmapped_share_of_big_tensor() >= 1


def test_stage_trainer_steps_run_inside_retained_heap(tmp_path: Path) -> None:
    growth: list[float] = []

    def loss_fn(model, batch, gen):
        growth.append(mmapped_share_of_big_tensor())
        return {"loss": (model.weight - batch["y"]).square().mean()}

    model = torch.nn.Linear(1, 1)
    cfg = StageConfig(epochs=2, steps=0, batch_size=4, warmup_fraction=0.0)
    trainer = StageTrainer("toy", model, loss_fn, cfg, tmp_path / "t.pt", {"toy": 1}, seed=0,
                           context=DistributedContext(), progress=False)
    trainer.fit({"y": torch.ones(8)}, None)
    assert growth == [0] * 4
    assert mmapped_share_of_big_tensor() >= 1
