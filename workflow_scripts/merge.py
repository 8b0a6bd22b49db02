"""Merge one fold's LoRA adapter into its base model (safetensors), for inference without peft."""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from workflow_scripts.errors import run_cli
from workflow_scripts.labels import LabelSpec


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--model-config", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from workflow_scripts.modeling import merge_adapter

    model_config = json.loads(args.model_config)
    device, dtype, why = merge_device_and_dtype(model_config, args.base)
    print(f"[merge] on {device} in {dtype}: {why}", flush=True)
    merge_adapter(args.base, args.adapter, args.out, len(LabelSpec.load(args.labels).probability_columns),
                  quantization=model_config.get("quantization", "none"),
                  trust_remote_code=bool(model_config.get("trust_remote_code", False)),
                  dtype=dtype, device=device)


def merge_device_and_dtype(model_config: dict, base: str | None = None) -> tuple[str, str, str]:
    """(device, torch dtype name, why) of a merge: the model's `precision` on the job's device, and the job's GPU
    when the base fits its free memory in that dtype, host memory otherwise (`execution.device.merge_placement`)."""
    from workflow_scripts.execution.device import merge_placement, resolve_device, resolve_precision, torch_dtype_of
    from workflow_scripts.modeling import weights_bytes

    device = resolve_device("auto")
    precision = resolve_precision(model_config.get("precision", "auto"), device)
    dtype = str(torch_dtype_of(precision)).removeprefix("torch.")
    base_bytes = weights_bytes(base, dtype) if base and device.type == "cuda" else None
    where, why = merge_placement(device, base_bytes)
    return where, dtype, why


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
