"""torch.distributed plumbing shared by extraction and training: set up from torchrun's environment or not at all."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Dist", "local_device"]


def local_device(device: str) -> str:
    """``cuda`` as this process's own GPU under ``torchrun`` (``cuda:LOCAL_RANK``, made current); else unchanged."""
    if device != "cuda" or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "LOCAL_RANK" not in os.environ:
        return device
    import torch

    device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    torch.cuda.set_device(torch.device(device))
    return device


@dataclass
class Dist:
    """This process's rank and the world size; ``owned`` when this object started the process group."""

    rank: int = 0
    world_size: int = 1
    owned: bool = False

    @classmethod
    def setup(cls, device: str, *, keep: bool = False) -> Dist:
        """Join the process group (started here when none is). ``keep``: a group started here stays up for later
        calls in this process and is destroyed at exit (a group destroyed and started again at once can race:
        the ranks' old addresses are still in torchrun's store)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch.distributed as dist

        owned = False
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
            owned = True
            if keep:
                import atexit

                atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
                owned = False
        return cls(dist.get_rank(), dist.get_world_size(), owned)

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def worst(self, status: int) -> int:
        """The largest status over all ranks, so one rank's failure stops all of them cleanly."""
        if self.world_size == 1:
            return status
        import torch
        import torch.distributed as dist

        flag = torch.tensor([status])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag)

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()

    def all_reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce (``sum`` or ``max``); a no-op on one process."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    def gather(self, obj: object) -> list[object]:
        """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` on one process."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out
