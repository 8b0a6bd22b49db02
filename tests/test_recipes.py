"""Every recipe's config is valid and its whole graph resolves, alone and with its demo-models overlay."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(path.name for path in (REPO / "recipes").glob("*.yaml") if not path.name.startswith("demo-models"))


def dry_run(*configfiles: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1",
               "--configfile", *configfiles]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_with_demo_models_resolves(recipe):
    overlay = f"recipes/demo-models-{recipe}"
    assert (REPO / overlay).exists(), f"{recipe} has no demo-models overlay"
    result = dry_run(f"recipes/{recipe}", overlay)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "all" in result.stdout


def test_map_recipe_keeps_the_write_up_settings():
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "map.yaml").read_text())
    defaults = recipe["model_defaults"]
    assert (defaults["r"], defaults["alpha"], defaults["lr"], defaults["batch_size"], defaults["quantization"]) == (8, 32, 2e-4, 16, "4bit")
    assert recipe["models"]["ettin_encoder_1b"]["lr"] == 4e-5
    assert recipe["ensembles"]["ratios"]["members"]["gemma2_9b"] == 1.2
