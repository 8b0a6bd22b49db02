"""The one device and precision resolver: CPU fallbacks and clear errors."""
import pytest
import torch

from workflow_scripts.errors import OoflineError
from workflow_scripts.execution.device import (DeviceReport, accelerate_mixed_precision, peak_gpu_memory_mb,
                                               resolve_device, resolve_precision, torch_dtype_of)


def test_auto_is_the_cpu_and_fp32_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device = resolve_device("auto")
    assert device == torch.device("cpu")
    assert resolve_precision("auto", device) == "fp32"
    assert torch_dtype_of(resolve_precision("auto", device)) is torch.float32
    assert accelerate_mixed_precision("fp32") == "no"
    assert DeviceReport.of(device, "fp32") == DeviceReport(device="cpu", gpu_name=None, precision="fp32")
    assert peak_gpu_memory_mb(device) is None


def test_auto_on_a_gpu_is_bf16_where_supported_and_the_rank_picks_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    device = resolve_device("auto")
    assert device == torch.device("cuda", 1)
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    assert resolve_precision("auto", device) == "bf16"
    fake_gpu(monkeypatch, "Tesla T4", (7, 5))
    assert resolve_precision("auto", device) == "fp16"
    assert resolve_precision("fp32", device) == "fp32"


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    """torch's device queries answer as this GPU would: its properties, and bf16 tensors that work everywhere (a T4
    or P100 emulates them, so torch.cuda.is_bf16_supported() answers True there by default)."""
    from types import SimpleNamespace

    properties = SimpleNamespace(name=name, major=capability[0], minor=capability[1], total_memory=16 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True, raising=False)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize("name, capability, expected", [
    ("Tesla T4", (7, 5), "fp16"), ("Tesla P100-PCIE-16GB", (6, 0), "fp16"), ("Tesla V100-SXM2-16GB", (7, 0), "fp16"),
    ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16"), ("NVIDIA L4", (8, 9), "bf16"), ("NVIDIA H100 80GB HBM3", (9, 0), "bf16")])
def test_auto_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, name, capability, expected):
    """Kaggle's T4 and P100 emulate bf16 (torch.cuda.is_bf16_supported() says True there): auto picks fp16."""
    fake_gpu(monkeypatch, name, capability)
    device = resolve_device("auto")
    # precondition, not the check: torch's own answer counts emulation, so a picker asking it would say bf16 here
    assert torch.cuda.is_bf16_supported(), "the fake GPU no longer answers as torch does on a T4 (emulated bf16)"
    assert resolve_precision("auto", device) == expected


def test_bad_requests_are_one_line_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OoflineError, match="no GPU is visible"):
        resolve_device("cuda")
    with pytest.raises(OoflineError, match="'tpu' is not one of"):
        resolve_device("tpu")
    with pytest.raises(OoflineError, match="fp16' needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(OoflineError, match="'half' is not one of"):
        resolve_precision("half", torch.device("cpu"))
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
