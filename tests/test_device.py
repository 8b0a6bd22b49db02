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
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto", device) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("auto", device) == "fp16"
    assert resolve_precision("fp32", device) == "fp32"


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
