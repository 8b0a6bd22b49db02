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
    merge_adapter(args.base, args.adapter, args.out, len(LabelSpec.load(args.labels).probability_columns),
                  quantization=model_config.get("quantization", "none"),
                  trust_remote_code=bool(model_config.get("trust_remote_code", False)))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
