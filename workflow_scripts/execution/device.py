"""Where a step runs and in which precision: the one resolver that every step touching a model uses.

A job sees only its own GPUs (CUDA_VISIBLE_DEVICES, set by execution.gpu_devices or Slurm); under a
multi-process launch each rank takes the GPU of its LOCAL_RANK. Precision is a per-model key:
`auto` is bf16 on a GPU with native bf16 (compute capability 8.0 or newer: A100, L4, H100) and fp16 on
an older one (T4, P100, V100: torch emulates bf16 there, without tensor cores), fp32 on the CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from workflow_scripts.errors import OoflineError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str = "auto"):
    """torch.device for this process: `auto` is this rank's GPU when one is visible, else the CPU."""
    import torch

    if requested not in DEVICES:
        raise OoflineError(f"device {requested!r} is not one of {', '.join(DEVICES)}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise OoflineError("device 'cuda' was asked for but no GPU is visible to this job "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r})")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def resolve_precision(precision: str, device) -> str:
    """`bf16`, `fp16` or `fp32` for `precision` on `device` (`auto` resolved; fp16 needs a GPU)."""
    import torch

    if precision not in PRECISIONS:
        raise OoflineError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    on_gpu = getattr(device, "type", str(device)) == "cuda"
    if precision == "auto":
        if not on_gpu:
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if precision == "fp16" and not on_gpu:
        raise OoflineError("precision 'fp16' needs a GPU (CPU autocast in fp16 is slow and unstable); "
                           "use bf16 or fp32 on the CPU")
    return precision


def native_bf16(device) -> bool:
    """Whether a CUDA device computes bf16 natively (compute capability >= 8.0; ROCm GPUs do).

    Not torch.cuda.is_bf16_supported(): by default it also answers True where bf16 is only emulated (a T4 or
    P100), which runs without tensor cores, several times slower than fp16."""
    import torch

    if torch.version.hip:
        return True
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


# a merge holds the base in the merge dtype plus what dequantising and merging a layer needs at a time, and
# the CUDA context: the base fits when these times its bytes, plus the fixed part, are free
MERGE_MEMORY_FACTOR = 1.15
MERGE_MEMORY_FIXED_BYTES = 1 << 30


def merge_placement(device, base_bytes: int | None) -> tuple[str, str]:
    """(where to merge, why): an adapter merge dequantises the whole base in the merge dtype (`base_bytes` in
    that dtype), so on a GPU it runs there only when that fits the GPU's free memory, else in host memory."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return "cpu", "the job has no GPU"
    if base_bytes is None:
        return str(device), "the base's size is unknown (no safetensors to read), so the job's GPU"
    free, total = torch.cuda.mem_get_info(device)
    needed = base_bytes * MERGE_MEMORY_FACTOR + MERGE_MEMORY_FIXED_BYTES
    sizes = f"the base takes {base_bytes / 1e9:.1f} GB in the merge dtype ({needed / 1e9:.1f} GB with headroom)"
    if needed <= free:
        return str(device), f"{sizes}, {device} has {free / 1e9:.1f} GB free"
    return "cpu", (f"{sizes}, more than the {free / 1e9:.1f} GB free of {total / 1e9:.1f} GB on {device}: "
                   "merging in host memory")


def torch_dtype_of(precision: str):
    """torch dtype of a resolved precision name."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def accelerate_mixed_precision(precision: str) -> str:
    """The `mixed_precision` argument of accelerate.Accelerator for a resolved precision."""
    return {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]


def process_accelerator(precision: str, device):
    """accelerate.Accelerator for this process in a resolved precision.

    accelerate keeps one precision per process; a later step in the same process (tests, benches) may ask for
    another, so the precision state is reset. The process group (PartialState) is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=device.type == "cpu", mixed_precision=accelerate_mixed_precision(precision))


@dataclass(frozen=True)
class DeviceReport:
    """Where a step really ran, for training.json and logs."""

    device: str
    gpu_name: str | None
    precision: str

    @classmethod
    def of(cls, device, precision: str) -> "DeviceReport":
        import torch

        name = torch.cuda.get_device_name(device) if getattr(device, "type", "") == "cuda" else None
        return cls(device=str(device), gpu_name=name, precision=precision)


def peak_gpu_memory_mb(device) -> float | None:
    """Peak GPU memory allocated by this process on `device` in MiB, None on the CPU."""
    import torch

    if getattr(device, "type", "") != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
