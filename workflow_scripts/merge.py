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
    device, dtype = merge_device_and_dtype(model_config)
    print(f"[merge] on {device} in {dtype}", flush=True)
    merge_adapter(args.base, args.adapter, args.out, len(LabelSpec.load(args.labels).probability_columns),
                  quantization=model_config.get("quantization", "none"),
                  trust_remote_code=bool(model_config.get("trust_remote_code", False)),
                  dtype=dtype, device=device)


def merge_device_and_dtype(model_config: dict) -> tuple[str, str]:
    """(device, torch dtype name) of a merge: the job's GPU when it has one, the model's `precision`."""
    from workflow_scripts.execution.device import resolve_device, resolve_precision, torch_dtype_of

    device = resolve_device("auto")
    precision = resolve_precision(model_config.get("precision", "auto"), device)
    return str(device), str(torch_dtype_of(precision)).removeprefix("torch.")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
