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


def recipe(name: str) -> dict:
    import yaml

    return yaml.safe_load((REPO / "recipes" / name).read_text())


def model_settings(config: dict, name: str) -> dict:
    """A model's settings as the workflow sees them: its kind's defaults, the model_defaults keys its kind
    has, then the model's own keys."""
    from workflow_scripts.config_check import with_model_defaults

    return with_model_defaults(config["models"][name], config.get("model_defaults", {}))


# ---- every value a write-up does not state is marked `oofline's choice` ----

MARK = "oofline's choice"
# The competition's own data and formats (file paths, columns, labels, metric, submission layout): no choice
COMPETITION = ("output_dir", "data.*", "task.type", "task.id_column", "task.label_column", "task.label_columns.*",
               "task.heads.*", "task.metric", "task.label_template", "submissions.*.source", "submissions.*.format",
               "submissions.*.id_column", "submissions.*.prediction_columns.*", "submissions.*.thresholds",
               "ensembles.*.members.[0-9]*", "retrieval.*.files.*", "retrieval.*.id_column",
               "retrieval.*.prediction_column", "retrieval.*.k", "answers.problems", "answers.test_problems",
               "*.select_checkpoint",
               # a package's competition: its slug, file names and evaluation API
               "kaggle.*.competition", "kaggle.*.test", "kaggle.*.sample_submission", "kaggle.*.interface",
               "kaggle.*.server")  # select_checkpoint is checked against the write-up in the Eedi test below
# What each write-up states (dotted key paths, * for any part): everything else must carry the mark
STATED = {
    "map.yaml": (  # 000: the model table (QLoRA-4bit r=8 alpha=32 lr 2e-4 bs 16; Ettin full 4e-5 bs 32), NFolds 5,
                   # the ensemble tables and OOF Training table
        "folds.n_folds", "model_defaults.kind", "model_defaults.quantization", "model_defaults.r", "model_defaults.alpha",
        "model_defaults.lr", "model_defaults.batch_size", "models.*.source", "models.ettin_encoder_1b.*",
        "models.qwen3_embedding_4b_lora.*", "models.qwen3_1_7b_full.*", "ensembles.submission_table.variants.*",
        "ensembles.ratio_table.variants.*", "ensembles.oof_table.variants.*", "submissions.*.top_k"),
    "unlp.yaml": (  # 001: MultilabelStratifiedKFold(5, shuffle, 42), the lora_config / train_args block, the hybrid
        "folds.*", "models.gemma2_27b.source", "models.gemma2_27b.kind", "models.gemma2_27b.r", "models.gemma2_27b.alpha",
        "models.gemma2_27b.dropout", "models.gemma2_27b.target_modules.*", "models.gemma2_27b.lr",
        "models.gemma2_27b.weight_decay", "models.gemma2_27b.scheduler", "models.gemma2_27b.epochs",
        "models.gemma2_27b.batch_size", "models.gemma2_27b.predict_batch_size", "models.gemma2_27b.grad_accum",
        "thresholds.folds_mean.*"),
    "cdc.yaml": (  # 004: 7 examples up to 2000 words, ~4000 rows a run; DeBERTa-v3-large; gemma2-9b / 2b LoRA;
                   # first epoch on the extra data then official only; soft labels; relabelling high-loss rows
        "language_models.*.source", "generators.*.model", "generators.*.fields.*", "generators.*.examples_per_prompt",
        "generators.*.word_budget", "generators.*.n_rows", "models.*.source", "models.*.kind", "models.*.extra_data.*",
        "models.*.stages.0.*", "models.*.stages.1.data.*", "soft_labels.*", "label_correction.deberta.action"),
    "eedi.yaml": (  # 002: hn_mine.py / add_reranker_score.py arguments, the fine-tune commands, "No eval needed"
        "retrieval.misconceptions.valid_fold", "retrieval.*.models.*",
        *(f"retrieval.*.embedder_inference.{key}" for key in (
            "embedder_class", "pooling_method", "query_instruction", "query_instruction_format", "embed_batch_size",
            "query_max_length", "passage_max_length")),
        *(f"retrieval.*.reranker_inference.{key}" for key in (
            "reranker_class", "rerank_query_instruction", "rerank_passage_instruction", "rerank_prompt",
            "rerank_max_length", "rerank_batch_size")),
        *(f"retrieval.*.{role}_defaults.{key}" for role in ("embedder", "reranker") for key in (
            "base", "model_class", "lora", "learning_rate", "batch_size", "gradient_accumulation_steps", "resources.gpu")),
        "retrieval.*.embedder_defaults.icl_examples", "retrieval.*.embedder_defaults.pooling_method",
        "retrieval.*.reranker_defaults.max_len", "retrieval.*.iterations.*.teacher",
        "retrieval.*.iterations.*.mine.embedder", "retrieval.*.iterations.*.mine.range_for_sampling",
        "retrieval.*.iterations.*.mine.negative_number",
        *(f"retrieval.*.iterations.*.{role}.{key}" for role in ("embedder", "reranker")
          for key in ("epochs", "knowledge_distillation")),
        "retrieval.*.iterations.*.reranker.label_smoothing"),
    "aimo.yaml": (  # 003: Gemma 3 12B ("RECOMMENDED") and Qwen 3 32B; batch_size=4, epochs=3, lr=5e-5, warmup=100
                    # steps, mixed precision, validation every 500 steps; {prompt, target} rows; six voting strategies
        "language_models.*.source", "language_models.gemma3_12b_sft.finetune.data",
        *(f"language_models.gemma3_12b_sft.finetune.{key}" for key in (
            "solution_column", "batch_size", "epochs", "lr", "warmup_steps", "eval_every", "precision")),
        "votes.all_models.strategies.*"),
}


def yaml_leaves(node, path=(), ancestors=()):
    """(dotted key path, line numbers whose comments may mark it) of every scalar in a composed YAML document:
    the scalar's own line and the lines of the keys above it (a mark on a block's key marks the block)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        own = {key.value for key, _ in node.value if key.value != "<<"}
        for key, value in node.value:
            if key.value == "<<":  # a merged anchor: the keys this mapping does not set itself
                merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
                pairs = [(k, v) for source in merged for k, v in source.value if k.value not in own]
                yield from yaml_leaves(yaml.MappingNode(node.tag, pairs), path, ancestors + (key.start_mark.line,))
            else:
                yield from yaml_leaves(value, path + (key.value,), ancestors + (key.start_mark.line,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from yaml_leaves(item, path + (str(index),), ancestors)
    else:
        yield ".".join(path), (node.start_mark.line, *ancestors)


def line_comment(line: str) -> str:
    """The `# ...` part of a YAML line (a # outside quotes, after a space)."""
    quote = None
    for position, char in enumerate(line):
        if char in "\"'" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (position == 0 or line[position - 1] in " \t"):
            return line[position:]
    return ""


def marked(lines: list[str], number: int) -> bool:
    """Line `number` or the comment-only lines right above it say oofline's choice."""
    if MARK in line_comment(lines[number]):
        return True
    above = number - 1
    while above >= 0 and lines[above].strip().startswith("#"):
        if MARK in lines[above]:
            return True
        above -= 1
    return False


def unmarked_choices(name: str) -> list[str]:
    import fnmatch

    import yaml

    text = (REPO / "recipes" / name).read_text()
    lines = text.splitlines()
    stated = COMPETITION + STATED[name]
    problems = []
    for path, numbers in yaml_leaves(yaml.compose(text)):
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in stated):
            continue
        if not any(marked(lines, number) for number in numbers):
            problems.append(f"{name}:{numbers[0] + 1}: {path}")
    return problems


@pytest.mark.parametrize("name", sorted(STATED))
def test_every_value_the_write_up_does_not_state_is_marked_as_oofline_s_choice(name):
    assert not unmarked_choices(name), "\n".join(unmarked_choices(name))


def test_the_mark_check_finds_an_unmarked_value(tmp_path, monkeypatch):
    """The check itself: a value the write-up does not state, with its mark removed, is reported by line."""
    text = (REPO / "recipes" / "unlp.yaml").read_text()
    assert "quantization: 4bit      # oofline's choice" in text
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "unlp.yaml").write_text(text.replace("quantization: 4bit      # oofline's choice", "quantization: 4bit #"))
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert [problem.split(": ", 1)[1] for problem in unmarked_choices("unlp.yaml")] == ["models.gemma2_27b.quantization"]


# Each test below checks a recipe against the numbers in its write-up (/work/shared/seeds/00N_*.txt).

def test_map_recipe_keeps_the_write_up_settings():
    """000: seven QLoRA-4bit decoders (r=8, alpha=32, lr 2e-4, batch 16) and Ettin-Encoder-1b fine-tuned
    (lr 4e-5, batch 32), 5 folds, MAP@3 over Category:Misconception; the submission is ratio row 1, top 3."""
    config = recipe("map.yaml")
    assert (config["task"]["metric"], config["task"]["label_template"], config["folds"]["n_folds"]) == (
        "map@3", "{Category}:{Misconception}", 5)
    for name, source in MAP_DECODERS.items():
        model = model_settings(config, name)
        assert (model["source"], model["kind"], model["quantization"], model["r"], model["alpha"], model["lr"],
                model["batch_size"]) == (source, "decoder_lora", "4bit", 8, 32, 2e-4, 16), name
    ettin = model_settings(config, "ettin_encoder_1b")
    assert (ettin["source"], ettin["kind"], ettin["lr"], ettin["batch_size"]) == (
        "jhu-clsp/ettin-encoder-1b", "encoder_full", 4e-5, 32)
    assert "quantization" not in ettin  # a full fine-tune: model_defaults' 4-bit LoRA keys do not reach it
    # the "OOF Training" table adds a plain-LoRA Qwen3-Embedding-4B (batch 8) and a full Qwen3-1.7B (lr 4e-5, batch 16)
    assert set(config["models"]) == set(MAP_DECODERS) | {"ettin_encoder_1b", "qwen3_embedding_4b_lora", "qwen3_1_7b_full"}
    submission = config["submissions"]["ratios_top3"]
    assert (submission["source"], submission["format"], submission["top_k"]) == ("ratio_table.row01", "top_k", 3)
    assert config["submissions"]["oof_best_top3"]["source"] == "oof_table.row03"  # their best: LB 0.948


MAP_DECODERS = {"qwen3_14b": "Qwen/Qwen3-14B", "gemma2_9b": "google/gemma-2-9b-it",
                "deepseek_r1_qwen3_8b": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
                "deepseek_math_7b": "deepseek-ai/deepseek-math-7b-instruct", "qwen3_embedding_4b": "Qwen/Qwen3-Embedding-4B",
                "acereason_7b": "nvidia/AceReason-Nemotron-1.1-7B", "llama31_8b": "meta-llama/Llama-3.1-8B-Instruct"}
# The write-up's three ensemble tables, pasted as it prints them (000, "Ensemble Submission", "Ensemble Ratio",
# "OOF Ensemble Submission"); the columns name models by the write-up's names.
MAP_SUBMISSION_TABLE = """
| Qwen3-14B | DeepSeek-R1-0528-Qwen3-8B | deepseek-math-7b-instruct | gemma-2-9b-it | Qwen3-Embedding-4B | Ettin-Encoder-1b | Top@k | LB Score |
| ✅         | ✅                         | ✅                         | ✅             | ✅                  | ❌                | 3     | 0.946    |
| ✅         | ✅                         | ✅                         | ✅             | ✅                  | ❌                | 10    | 0.946    |
| ✅         | ✅                         | ✅                         | ✅             | ❌                  | ❌                | 3     | 0.944    |
| ✅         | ❌                         | ✅                         | ✅             | ✅                  | ❌                | 3     | 0.945    |
| ✅         | ✅                         | ❌                         | ✅             | ✅                  | ❌                | 3     | 0.945    |
| ✅         | ✅                         | ✅                         | ❌             | ✅                  | ❌                | 3     | 0.945    |
| ✅         | ✅                         | ✅                         | ✅             | ✅                  | ✅                | 10    | 0.947    |
| ✅         | ❌                         | ✅                         | ✅             | ✅                  | ✅                | 10    | 0.947    |
| ✅         | ✅                         | ❌                         | ✅             | ✅                  | ✅                | 10    | 0.946    |
| ✅         | ✅                         | ❌                         | ✅             | ❌                  | ❌                | 10    | 0.944    |
| ✅         | ❌                         | ✅                         | ✅             | ❌                  | ❌                | 10    | 0.945    |
| ✅         | ❌                         | ❌                         | ✅             | ✅                  | ❌                | 10    | 0.946    |
| ✅         | ❌                         | ❌                         | ✅             | ✅                  | ✅                | 10    | 0.945    |
| ❌         | ❌                         | ✅                         | ✅             | ✅                  | ❌                | 10    | 0.946    |
| ❌         | ✅                         | ✅                         | ✅             | ✅                  | ❌                | 10    | 0.945    |
| ❌         | ❌                         | ✅                         | ✅             | ✅                  | ✅                | 10    | 0.947    |
"""
MAP_RATIO_TABLE = """
| Models | Qwen3-14B | DeepSeek-R1-0528-Qwen3-8B | deepseek-math-7b-instruct | gemma-2-9b-it | Qwen3-Embedding-4B | Ettin-Encoder-1b | LB Score       |
| Ratios | 1.0       | 0                         | 1.0                       | 1.2           | 0.8                | 0.8              | 0.947          |
| Ratios | 1.2       | 0                         | 1.2                       | 1.0           | 0.8                | 0.8              | 0.947          |
| Ratios | 1.2       | 0                         | 0.8                       | 1.0           | 0.8                | 0.8              | 0.947          |
| Ratios | 1.0       | 0                         | 0.8                       | 1.2           | 0.8                | 0.8              | 0.947          |
| Ratios | 1.2       | 0                         | 1.0                       | 1.2           | 0.8                | 0.8              | 0.947          |
| Ratios | 0.8       | 0                         | 1.0                       | 1.2           | 0.8                | 0.8              | 0.947          |
| Ratios | 1.2       | 0                         | 1.0                       | 1.2           | 1.0                | 0.8              | 0.947          |
| Ratios | 0         | 0                         | 1.0                       | 1.0           | 1.2                | 0.8              | 0.946          |
| Ratios | 0         | 0                         | 1.2                       | 1.2           | 1.0                | 0.8              | 0.946          |
| Ratios | 0         | 0                         | 1.0                       | 1.0           | 1.0                | 1.0              | 0.947 (higher) |
"""
MAP_OOF_TABLE = """
| DeepSeek-R1-0528-Qwen3-8B | deepseek-math-7b-instruct | gemma-2-9b-it | Qwen3-Embedding-4B | Ettin-Encoder-1b | LB Score |
| ❌                         | ✅                         | ❌             | ❌                  | ✅                | 0.944    |
| ❌                         | ✅                         | ❌             | ✅                  | ✅                | 0.947    |
| ❌                         | ✅ (1.0)                   | ❌             | ✅ (1.2)            | ✅ (0.8)          | 0.948    |
| ✅ (1.0)                   | ❌                         | ❌             | ✅ (1.2)            | ✅ (0.8)          | -        |
| ✅ (1.2)                   | ❌                         | ❌             | ✅ (1.0)            | ✅ (0.8)          | -        |
| ✅ (1.2)                   | ✅ (1.0)                   | ❌             | ❌                  | ✅ (0.8)          | -        |
| ❌                         | ✅                         | ❌             | ✅                  | ❌                | 0.945    |
| ❌                         | ✅                         | ✅             | ❌                  | ❌                | 0.945    |
| ❌                         | ✅                         | ✅             | ✅                  | ❌                | 0.947    |
| ✅                         | ❌                         | ❌             | ✅                  | ❌                | 0.947    |
"""
# the write-up's model names -> the recipe's; in the OOF table Qwen3-Embedding-4B is the plain LoRA run (oofline's choice)
MAP_NAMES = {"Qwen3-14B": "qwen3_14b", "DeepSeek-R1-0528-Qwen3-8B": "deepseek_r1_qwen3_8b",
             "deepseek-math-7b-instruct": "deepseek_math_7b", "gemma-2-9b-it": "gemma2_9b",
             "Qwen3-Embedding-4B": "qwen3_embedding_4b", "Ettin-Encoder-1b": "ettin_encoder_1b"}


def write_up_rows(table: str, names: dict) -> list[tuple[dict, int | None, float | None]]:
    """(member -> weight, Top@k, LB) per row of a pasted table: a tick is weight 1 (or its bracket), a cross
    or 0 is no member."""
    header, *lines = [[cell.strip() for cell in line.strip("| ").split("|")] for line in table.strip().splitlines()]
    rows = []
    for cells in lines:
        row = dict(zip(header, cells))
        members = {}
        for column, name in names.items():
            cell = row.get(column, "❌")
            weight = (float(cell.split("(")[1].rstrip(")")) if "(" in cell else 1.0) if "✅" in cell else (
                0.0 if cell == "❌" else float(cell))
            if weight:
                members[name] = weight
        lb = row["LB Score"].split()[0]
        rows.append((members, int(row["Top@k"]) if "Top@k" in row else None, None if lb == "-" else float(lb)))
    return rows


def test_map_recipe_has_every_row_of_the_write_up_s_three_tables_as_a_named_variant_with_its_lb():
    """Each table is a sweep whose variants are its rows in order (members, weights, Top@k), and the recipe's
    lb_scores file holds each row's LB; nothing more."""
    import yaml

    from workflow_scripts.sweeps import expand_sweeps

    config = recipe("map.yaml")
    expansion = expand_sweeps(config)
    lb = yaml.safe_load((REPO / config["lb_scores"]).read_text())
    oof_names = {**MAP_NAMES, "Qwen3-Embedding-4B": "qwen3_embedding_4b_lora"}
    for sweep, table, names in (("submission_table", MAP_SUBMISSION_TABLE, MAP_NAMES),
                                ("ratio_table", MAP_RATIO_TABLE, MAP_NAMES), ("oof_table", MAP_OOF_TABLE, oof_names)):
        variants = expansion.sweeps[sweep].variants
        rows = write_up_rows(table, names)
        assert [v.name for v in variants] == [f"{sweep}.row{i:02d}" for i in range(1, len(rows) + 1)]
        for variant, (members, top_k, score) in zip(variants, rows):
            entry = expansion.config["ensembles"][variant.name]
            weights = entry["members"] if isinstance(entry["members"], dict) else dict.fromkeys(entry["members"], 1.0)
            assert weights == members and entry.get("member_top_k") == top_k, variant.name
            assert lb.get(variant.name) == score, variant.name
    assert len([name for name in lb if "_table." in name]) == 16 + 10 + 7  # the OOF table's rows 4-6 were not submitted


def test_map_recipe_plans_every_table_row_as_an_ensemble_over_models_trained_once(tmp_path):
    """The dry run (recipe + demo overlay): the 36 table rows are 36 ensemble jobs named as the rows, and each
    model's fold is trained by exactly one job however many rows use it; the sweep lines list each table."""
    sys.path.insert(0, str(REPO / "tests"))
    from dry_run_plans import parse_jobs

    command = [sys.executable, "-m", "snakemake", "-n", "--printshellcmds", "--cores", "1", "--directory", str(tmp_path),
               "--configfile", "recipes/map.yaml", "recipes/demo-models-map.yaml"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = parse_jobs(result.stdout)
    ensembles = {w.split("=", 1)[1] for job in jobs if job["rule"] == "ensemble" for w in job["wildcards"]}
    for sweep, count in (("submission_table", 16), ("ratio_table", 10), ("oof_table", 10)):
        assert {name for name in ensembles if name.startswith(sweep + ".")} == {
            f"{sweep}.row{i:02d}" for i in range(1, count + 1)}
        assert f"sweep ensembles.{sweep}: {count} variant(s) (select: nested)" in result.stderr
    trainings = [tuple(sorted(job["wildcards"])) for job in jobs if job["rule"].startswith("train_")]
    # per fold: the decoders (Qwen3-14B under 2 seeds: two trainings), the encoder, the plain-LoRA embedding model
    # and the full fine-tune of Qwen3-1.7B; TF-IDF grid variants train in their own rule
    assert len(trainings) == len(set(trainings)) == 2 * (len(MAP_DECODERS) + 1 + 1 + 1 + 1)


def test_unlp_recipe_keeps_the_write_up_settings():
    """001: Gemma2-27B LoRA r=64/alpha=128/dropout 0.05 on the seven projections, lr 2e-5, weight decay 0.01,
    cosine, 5 epochs, batch 8 x 4 accumulation; MultilabelStratifiedKFold(5, shuffle, 42); hybrid thresholds
    0.5 * grid + 0.5 * class balance; macro F1 over 10 techniques."""
    config = recipe("unlp.yaml")
    assert (config["task"]["type"], config["task"]["metric"], len(config["task"]["label_columns"])) == (
        "multilabel", "macro_f1", 10)
    assert config["folds"] == {"scheme": "multilabel_stratified", "n_folds": 5, "seed": 42}
    gemma = model_settings(config, "gemma2_27b")
    assert gemma["source"] == "google/gemma-2-27b" and gemma["kind"] == "decoder_lora"
    assert (gemma["r"], gemma["alpha"], gemma["dropout"], gemma["lr"], gemma["weight_decay"], gemma["scheduler"],
            gemma["epochs"], gemma["batch_size"], gemma["predict_batch_size"], gemma["grad_accum"]) == (
        64, 128, 0.05, 2e-5, 0.01, "cosine", 5, 8, 8, 4)
    assert sorted(gemma["target_modules"]) == sorted(
        ["o_proj", "v_proj", "q_proj", "k_proj", "gate_proj", "down_proj", "up_proj"])
    assert config["thresholds"]["folds_mean"] == {"method": "hybrid", "weight": 0.5}
    # oofline's choice (the write-up does not say which epoch a fold kept): the best epoch per fold, flagged optimistic
    assert gemma["select_epoch"] == "best"


def test_eedi_recipe_keeps_the_write_up_settings():
    """002: mining 2-200 with 15 negatives (2-100 for the reranker); ICL embedder LoRA lr 1e-4, batch 8 x 2 GPUs,
    3 epochs, query/passage lengths 1024/512; reranker LoRA lr 2e-4, batch 1 x 8 accumulation x 4 GPUs;
    iteration 1 mines with the iteration-0 embedder, distils from the iteration-0 reranker, reranker label
    smoothing 0.2; MAP@25. The submission trains on every query ("No eval needed") and keeps epoch 3 of the
    4-epoch fine-tunes; the validation run chose those epochs on a held-out fold."""
    from workflow_scripts.rule_params import resolved_pipeline

    retrieval = recipe("eedi.yaml")["retrieval"]
    assert set(retrieval) == {"misconceptions", "misconceptions_cv"}
    for name, pipeline in retrieval.items():
        pipeline = resolved_pipeline(pipeline)
        assert (pipeline["k"], pipeline["models"]["bge_icl"], pipeline["models"]["qwen14b"]) == (
            25, "BAAI/bge-en-icl", "Qwen/Qwen2.5-14B-Instruct")
        first, second = pipeline["iterations"]
        assert (first["mine"]["embedder"], second["mine"]["embedder"], second["teacher"]) == ("bge_icl", "iter0", "iter0")
        for iteration in (first, second):
            assert (iteration["mine"]["range_for_sampling"], iteration["mine"]["negative_number"]) == ("2-200", 15)
            embedder, reranker = iteration["embedder"], iteration["reranker"]
            assert (embedder["base"], embedder["model_class"], embedder["lora"], embedder["learning_rate"],
                    embedder["batch_size"], embedder["resources"]["gpu"], embedder["query_max_len"],
                    embedder["passage_max_len"], embedder["pooling_method"]) == (
                "qwen14b", "decoder-only-icl", True, 1e-4, 8, 2, 1024, 512, "last_token")
            assert (reranker["base"], reranker["model_class"], reranker["lora"], reranker["learning_rate"],
                    reranker["batch_size"], reranker["gradient_accumulation_steps"], reranker["resources"]["gpu"],
                    reranker["max_len"]) == ("qwen14b", "decoder-only-base", True, 2e-4, 1, 8, 4, 512)
            assert (reranker["mine"]["range_for_sampling"], reranker["mine"]["negative_number"]) == ("2-100", 15)
        assert first["embedder"]["epochs"] == 3 and first["embedder"].get("select_checkpoint", "last") == "last"
        chosen = "best" if name == "misconceptions_cv" else 3  # lora_epoch_2 (from 0) / "take epoch 3" / "Epoch 3"
        for fine_tune in (first["reranker"], second["embedder"], second["reranker"]):
            assert (fine_tune["epochs"], fine_tune["select_checkpoint"]) == (4, chosen), name
        assert not first["embedder"].get("knowledge_distillation") and second["embedder"]["knowledge_distillation"]
        assert second["reranker"]["knowledge_distillation"] and second["reranker"]["label_smoothing"] == 0.2
        assert (pipeline["reranker_inference"]["rerank_query_instruction"],
                pipeline["reranker_inference"]["rerank_passage_instruction"],
                pipeline["reranker_inference"]["rerank_max_length"]) == ("A: ", "B: ", 512)
    assert retrieval["misconceptions"]["valid_fold"] is None and retrieval["misconceptions_cv"]["valid_fold"] == 0


def test_aimo_recipe_keeps_the_write_up_settings():
    """003: chain-of-thought prompts with answer extraction, several prompts per model, and the six voting
    strategies (majority, confidence-weighted, max, median, unanimous with a fallback, numeric mean)."""
    config = recipe("aimo.yaml")
    assert len(config["answers"]["prompts"]) >= 3
    strategies = config["votes"]["all_models"]["strategies"]
    assert sorted(strategies) == sorted(["majority", "confidence_weighted", "max_confidence", "median_confidence",
                                         "unanimous", "numeric_mean"])
    assert config["votes"]["all_models"]["fallback"] != "unanimous"
    assert {answer.split("/")[1] for answer in config["votes"]["gemma_prompts"]["answers"]} == set(
        config["answers"]["prompts"])  # a multi-prompt ensemble of one model


def test_cdc_recipe_keeps_the_write_up_settings():
    """004: 21 binary + a 6-class and a 12-class variable, mean F1; few-shot generated narratives from gemma2,
    qwen2.5 and mistral (7 examples, 2000 words, ~4000 rows a run, 20000 rows with the official ones); a
    DeBERTa-v3-large teacher with label smoothing whose high-loss rows are relabelled; gemma2-9b LoRA students
    whose first epoch also takes the generated rows, then official rows only; the final model (round 2) plus
    two more gemma2-9b and a gemma2-2b with other LoRA parameters in a weighted ensemble; threshold search."""
    config = recipe("cdc.yaml")
    heads = config["task"]["heads"]
    assert config["task"]["metric"] == "mean_f1"
    assert [head["type"] for head in heads].count("binary") == 21
    assert [head["name"] for head in heads if head["type"] == "multiclass"] == ["InjuryLocationType", "WeaponType1"]
    sources = {name: lm["source"] for name, lm in config["language_models"].items()}
    assert {source.split("/")[0] for source in sources.values()} == {"google", "Qwen", "mistralai"}
    assert "gemma-2" in sources["gemma2_9b_it"] and "Qwen2.5" in sources["qwen25_7b"] and "Mistral" in sources["mistral_7b"]
    generators = config["generators"]
    assert {generator["model"] for generator in generators.values()} == set(sources)
    assert all((g["examples_per_prompt"], g["word_budget"], g["n_rows"]) == (7, 2000, 4000) for g in generators.values())
    runs = sum(len(generator.get("seeds", [0])) for generator in generators.values())
    assert runs * 4000 + 4000 == 20000  # "20000 pieces of data (including official data)", ~4000 official rows
    teacher = model_settings(config, "deberta")
    assert (teacher["source"], teacher["kind"]) == ("microsoft/deberta-v3-large", "encoder_full")
    assert teacher["label_smoothing"] > 0 and config["label_correction"]["deberta"]["action"] == "relabel"
    generated = {f"{name}-seed{seed}" for name, g in generators.items() for seed in g.get("seeds", [0])}
    assert set(config["soft_labels"]["deberta"]["datasets"]) == set(config["soft_labels"]["gemma_r1"]["datasets"]) == generated
    students = ["gemma_r1", "gemma_r2", "gemma_r2_r64", "gemma_r2_r8", "gemma2_2b"]
    for name in students:
        student = model_settings(config, name)
        assert student["kind"] == "decoder_lora", name
        assert student["source"] == ("google/gemma-2-2b" if name == "gemma2_2b" else "google/gemma-2-9b"), name
        first, *rest = student["stages"]
        # round 2 pretrains on the soft-labelled official rows in place of the hard ones ("soft labeling all the other data")
        official = "official_soft" if "official_soft" in student["extra_data"] else "official"
        assert first["epochs"] == 1 and set(first["data"]) == {official, *student["extra_data"]}, name
        assert len(student["extra_data"]) - (official == "official_soft") == len(generated), name
        assert rest and all(stage["data"] == ["official"] for stage in rest), name
        teacher_name = "deberta" if name == "gemma_r1" else "gemma_r1"
        assert all(path.startswith(f"results/cdc/soft_labels/{teacher_name}/") for path in student["extra_data"].values())
    final = config["ensembles"]["final"]["members"]
    # "2 more gemma2-9b models and 1 gemma2-2b model with different lora parameters ... combined with the final model"
    assert set(final) == {"gemma_r2", "gemma_r2_r64", "gemma_r2_r8", "gemma2_2b"} and len(set(final.values())) > 1
    loras = {(model_settings(config, name)["r"], model_settings(config, name)["alpha"]) for name in final}
    assert len(loras) == len(final)  # each with its own LoRA parameters
    assert config["submissions"]["final"]["thresholds"] is True and "final" in config["thresholds"]


# ---- each overlay swaps in a tiny model of the real model's own family ----

# the family of each hub model the recipes name, by a part of its id (the write-ups' models)
HUB_FAMILIES = {"gemma-3": "gemma3", "gemma-2": "gemma2", "qwen3": "qwen3", "qwen2.5": "qwen2", "nemotron": "qwen2",
                "mistral": "mistral", "bge-en-icl": "mistral", "deberta-v3": "deberta-v2", "ettin-encoder": "modernbert",
                "llama-3": "llama", "deepseek-math": "llama"}


def hub_family(source: str) -> str:
    matches = [family for part, family in HUB_FAMILIES.items() if part in source.lower()]
    assert len(matches) == 1, f"{source}: no single known family ({matches})"
    return matches[0]


def swapped_sources(real, demo, path=()):
    """(path, real source, demo source) for every model source the overlay replaces."""
    if isinstance(real, dict) and isinstance(demo, dict):
        for key in real.keys() & demo.keys():
            yield from swapped_sources(real[key], demo[key], path + (key,))
    elif isinstance(real, str) and isinstance(demo, str) and "/" in real and demo.startswith(("tiny:", "packaged:")):
        yield ".".join(path), real, demo


@pytest.mark.parametrize("name", RECIPES)
def test_each_demo_overlay_swaps_in_a_tiny_model_of_the_real_model_s_family(name):
    from workflow_scripts.tiny_models import TINY_SOURCES

    swaps = list(swapped_sources(recipe(name), recipe(f"demo-models-{name}")))
    if name == "cpu-baseline.yaml":
        assert swaps == []  # its models are the packaged MiniLM already
        return
    assert swaps, f"{name}: the overlay swaps no model"
    for path, real, demo in swaps:
        assert demo in TINY_SOURCES and demo == f"tiny:{hub_family(real)}", (path, real, demo)
