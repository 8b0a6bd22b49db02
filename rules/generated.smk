# Data that models make: few-shot synthetic rows, teacher soft labels, corrected labels, answers and votes.


rule prepare_language_model:
    input:
        corpus=out("data/train.parquet") if "task" in config else [],
    output:
        directory(out("lms/{lm}/base")),
    wildcard_constraints:
        lm=names_pattern(SOURCED_LMS),
    params:
        code=code_digest("prepare_model"),
        source=lambda wildcards: LANGUAGE_MODELS[wildcards.lm]["source"],
        corpus=lambda wildcards, input: rule_params.optional_input_flag("corpus", input.corpus),
    log:
        out("logs/prepare_lm/{lm}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        "{PY}.prepare_model --source {params.source:q} --out {output:q} {params.corpus} > {log:q} 2>&1"


rule finetune_language_model:
    input:
        base=lambda wildcards: out(f"lms/{FINETUNED_LMS[wildcards.lm]['base']}/base"),
        rows=language_model_finetune_rows,
    output:
        directory(out("lms/{lm}/base")),
    wildcard_constraints:
        lm=names_pattern(FINETUNED_LMS),
    params:
        code=code_digest("generated.finetune_lm"),
        options=language_model_finetune_options,
    threads: 2
    resources:
        **FINETUNE_STEP_RESOURCES,
    log:
        out("logs/finetune_lm/{lm}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".generated.finetune_lm --base {input.base:q} --rows {input.rows:q} {params.options}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"


rule math_solutions:
    output:
        out("data/math_solutions/{lm}.parquet"),
    wildcard_constraints:
        lm=names_pattern(FINETUNED_LMS),
    params:
        code=code_digest("generated.math_demo"),
        n=lambda wildcards: FINETUNED_LMS[wildcards.lm].get("n_rows", 40),
        # a third seed: fine-tuning rows are neither the dev problems nor the test problems
        seed=lambda wildcards: ANSWERS.get("seed", 0) + 2,
    log:
        out("logs/math_solutions/{lm}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.generated.math_demo --solutions --n {params.n} --seed {params.seed} --output {output:q} > {log:q} 2>&1"


rule generate_rows:
    input:
        model=lambda wildcards: out(f"lms/{GENERATORS[wildcards.generator]['model']}/base"),
        train=config.get("data", {}).get("train", []),
    output:
        rows=temp(out("generated/{generator}/raw/seed{seed}.parquet")),
        report=out("generated/{generator}/raw/seed{seed}.json"),
    params:
        code=code_digest("generated.generate"),
        options=generator_options,
    threads: lambda wildcards: GENERATORS[wildcards.generator].get("resources", {}).get("threads", 2)
    resources:
        **GENERATOR_STEP_RESOURCES,
    log:
        out("logs/generate/{generator}/seed{seed}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".generated.generate --model {input.model:q} --train {input.train:q} --generator {wildcards.generator}"
        " --seed {wildcards.seed} {params.options} --threads {threads}"
        " --output {output.rows:q} --report {output.report:q} > {log:q} 2>&1"


# generators.NAME.nested: rows for the students of a held-out set S, prompted with examples from outside S only
rule generate_rows_for_split:
    input:
        model=lambda wildcards: out(f"lms/{GENERATORS[wildcards.generator]['model']}/base"),
        train=config.get("data", {}).get("train", []),
        folds=out("folds.parquet"),
    output:
        rows=temp(out("generated/{generator}/{split}/raw/seed{seed}.parquet")),
        report=out("generated/{generator}/{split}/raw/seed{seed}.json"),
    wildcard_constraints:
        split=teacher_labels.SPLIT_PATTERN,
    params:
        code=code_digest("generated.generate"),
        # no `input` argument: Snakemake does not track a param function that reads input
        options=lambda wildcards: generator_options(wildcards) + " " + cli_flags(
            {"folds": out("folds.parquet"), "held_out_folds": teacher_labels.held_out_set(wildcards.split)}),
    threads: lambda wildcards: GENERATORS[wildcards.generator].get("resources", {}).get("threads", 2)
    resources:
        **GENERATOR_STEP_RESOURCES,
    log:
        out("logs/generate/{generator}/{split}/seed{seed}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".generated.generate --model {input.model:q} --train {input.train:q} --generator {wildcards.generator}"
        " --seed {wildcards.seed} {params.options} --threads {threads}"
        " --output {output.rows:q} --report {output.report:q} > {log:q} 2>&1"


rule deduplicate_rows:
    input:
        rows=out("generated/{generator}/raw/seed{seed}.parquet"),
        train=config.get("data", {}).get("train", []),
    output:
        rows=out("generated/{generator}/seed{seed}.parquet"),
        report=out("generated/{generator}/seed{seed}.dedup.json"),
    params:
        code=code_digest("generated.dedup"),
        columns=lambda wildcards: GENERATORS[wildcards.generator].get("dedup_columns", ["text"]),
        threshold=lambda wildcards: GENERATORS[wildcards.generator].get("near_duplicate_threshold", 0.8),
    log:
        out("logs/dedup/{generator}/seed{seed}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        DEDUP_COMMAND


use rule deduplicate_rows as deduplicate_rows_for_split with:
    input:
        rows=out("generated/{generator}/{split}/raw/seed{seed}.parquet"),
        train=config.get("data", {}).get("train", []),
    output:
        rows=out("generated/{generator}/{split}/seed{seed}.parquet"),
        report=out("generated/{generator}/{split}/seed{seed}.dedup.json"),
    wildcard_constraints:
        split=teacher_labels.SPLIT_PATTERN,
    log:
        out("logs/dedup/{generator}/{split}/seed{seed}.log"),


rule teacher_predictions:
    input:
        model=trained_dir,
        base=base_model,
        rows=lambda wildcards: dataset_file(wildcards.dataset),
        labels=out("labels.json"),
    output:
        temp(out("predictions/{model}/{split}/on-{dataset}.parquet")),
    params:
        code=code_digest("predict"),
        fold=lambda wildcards: wildcards.split[len("fold"):],
        base=base_model_path,
        model_config=model_step_config(PREDICT),
    threads: model_threads
    resources:
        **MODEL_STEP_RESOURCES,
    log:
        out("logs/predict/{model}/{split}-on-{dataset}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".predict --test {input.rows:q} --labels {input.labels:q} --fold {params.fold}"
        " --model-dir {input.model:q} --base {params.base:q} --model-config {params.model_config:q}"
        " --run-settings {resources.run_settings:q} --test-out {output:q} --threads {threads} > {log:q} 2>&1"


# a nested generator's rows for a held-out set, predicted by the teacher trained without that set
use rule teacher_predictions as split_teacher_predictions with:
    input:
        model=trained_dir,
        base=base_model,
        rows=lambda wildcards: dataset_file(wildcards.dataset, wildcards.split),
        labels=out("labels.json"),
    output:
        temp(out("predictions/{model}/{split}/on-{dataset}-of-split.parquet")),
    log:
        out("logs/predict/{model}/{split}-on-{dataset}-of-split.log"),


rule soft_labels:
    input:
        rows=lambda wildcards: dataset_file(wildcards.dataset),
        teacher=lambda wildcards: [
            out(f"predictions/{wildcards.teacher}/fold{k}/on-{wildcards.dataset}.parquet")
            for k in model_folds(wildcards.teacher)
        ],
        labels=out("labels.json"),
    output:
        rows=out("soft_labels/{teacher}/{dataset}.parquet"),
        summary=out("soft_labels/{teacher}/{dataset}.json"),
    params:
        code=code_digest("generated.soft_labels"),
        temperature=lambda wildcards: SOFT_LABELS.get(wildcards.teacher, {}).get("temperature", 1.0),
        # the mean of every fold model: a student of fold k learns from teachers that saw fold k (nested: false)
        options=lambda wildcards: cli_flags({"label_source": [
            f"{wildcards.teacher}/fold{k}" for k in model_folds(wildcards.teacher)]}),
    log:
        out("logs/soft_labels/{teacher}/{dataset}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        SOFT_LABEL_COMMAND


rule official_soft_labels:
    input:
        rows=out("data/train.parquet"),
        # out-of-fold: every official row is labelled by the fold model that never trained on it
        teacher=out("oof/{teacher}.parquet"),
        labels=out("labels.json"),
    output:
        rows=out("soft_labels/{teacher}/official.parquet"),
        summary=out("soft_labels/{teacher}/official.json"),
    params:
        code=code_digest("generated.soft_labels"),
        temperature=lambda wildcards: SOFT_LABELS.get(wildcards.teacher, {}).get("temperature", 1.0),
        options=lambda wildcards: cli_flags({"label_source": [f"{wildcards.teacher}/fold{{fold}}"]}),
    log:
        out("logs/soft_labels/{teacher}/official.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        SOFT_LABEL_COMMAND


# ---- nested teacher labels (generated/teacher_labels.py): a student trained without folds S learns only from
# teacher models trained without S (generated rows) or without S and the row's own fold (official rows)


rule nested_soft_labels:
    input:
        rows=lambda wildcards: dataset_file(wildcards.dataset, wildcards.split),
        teacher=lambda wildcards: out(f"predictions/{wildcards.teacher}/{wildcards.split}/on-{wildcards.dataset}"
                                      + ("-of-split" if generator_is_nested(wildcards.dataset) else "") + ".parquet"),
        labels=out("labels.json"),
    output:
        rows=out("soft_labels/{teacher}/{split}/{dataset}.parquet"),
        summary=out("soft_labels/{teacher}/{split}/{dataset}.json"),
    wildcard_constraints:
        split=teacher_labels.SPLIT_PATTERN,
    params:
        code=code_digest("generated.soft_labels"),
        temperature=lambda wildcards: SOFT_LABELS.get(wildcards.teacher, {}).get("temperature", 1.0),
        options=lambda wildcards: cli_flags({"label_source": [f"{wildcards.teacher}/{wildcards.split}"]}),
    log:
        out("logs/soft_labels/{teacher}/{split}/{dataset}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        SOFT_LABEL_COMMAND


rule inner_predictions:
    input:
        model=trained_dir,
        base=base_model,
        train=out("data/train.parquet"),
        folds=out("folds.parquet"),
        labels=out("labels.json"),
    output:
        temp(out("predictions/{model}/{split}/on-fold{fold}.parquet")),
    wildcard_constraints:
        model=names_pattern(LORA_MODELS + FULL_MODELS),
        split=teacher_labels.SPLIT_PATTERN,
    params:
        code=code_digest("predict"),
        base=base_model_path,
        model_config=model_step_config(PREDICT),
    threads: model_threads
    resources:
        **MODEL_STEP_RESOURCES,
    log:
        out("logs/predict/{model}/{split}-on-fold{fold}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".predict --train {input.train:q} --folds {input.folds:q} --fold {wildcards.fold}"
        " --labels {input.labels:q} --model-dir {input.model:q} --base {params.base:q}"
        " --model-config {params.model_config:q} --run-settings {resources.run_settings:q} --valid-out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule inner_oof:
    input:
        unpack(inner_oof_inputs),
        folds=out("folds.parquet"),
    output:
        out("inner_oof/{teacher}/{split}.parquet"),
    wildcard_constraints:
        split=teacher_labels.SPLIT_PATTERN,
    params:
        code=code_digest("generated.teacher_labels"),
        parts=inner_oof_parts,
    log:
        out("logs/inner_oof/{teacher}/{split}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.generated.teacher_labels --teacher {wildcards.teacher} --split {wildcards.split} --folds {input.folds:q}"
        " {params.parts} --output {output:q} > {log:q} 2>&1"


rule nested_official_soft_labels:
    input:
        rows=out("data/train.parquet"),
        teacher=out("inner_oof/{teacher}/{split}.parquet"),
        folds=out("folds.parquet"),
        labels=out("labels.json"),
    output:
        rows=out("soft_labels/{teacher}/{split}/official.parquet"),
        summary=out("soft_labels/{teacher}/{split}/official.json"),
    wildcard_constraints:
        split=teacher_labels.SPLIT_PATTERN,
    params:
        code=code_digest("generated.soft_labels"),
        temperature=lambda wildcards: SOFT_LABELS.get(wildcards.teacher, {}).get("temperature", 1.0),
        # the inner OOF names the inner model of every row
        options=lambda wildcards, input: cli_flags({"folds": input.folds,
                                                    "held_out_folds": teacher_labels.held_out_set(wildcards.split)}),
    log:
        out("logs/soft_labels/{teacher}/{split}/official.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        SOFT_LABEL_COMMAND


rule nested_label_correction:
    input:
        train=out("data/train.parquet"),
        oof=out("inner_oof/{model}/{split}.parquet"),
        labels=out("labels.json"),
        targets=out("targets.parquet"),
        folds=out("folds.parquet"),
    output:
        train=out("label_correction/{model}/{split}.parquet"),
        targets=out("label_correction/{model}/{split}.targets.parquet"),
        report=out("label_correction/{model}/{split}.changes.csv"),
        summary=out("label_correction/{model}/{split}.json"),
    wildcard_constraints:
        split=teacher_labels.SPLIT_PATTERN,
    params:
        code=code_digest("generated.label_correction"),
        top_percent=lambda wildcards: LABEL_CORRECTION[wildcards.model].get("top_percent", 5),
        action=lambda wildcards: LABEL_CORRECTION[wildcards.model].get("action", "relabel"),
        options=lambda wildcards, input: cli_flags({"folds": input.folds,
                                                    "held_out_folds": teacher_labels.held_out_set(wildcards.split)}),
    log:
        out("logs/label_correction/{model}/{split}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        LABEL_CORRECTION_COMMAND


rule label_correction:
    input:
        train=out("data/train.parquet"),
        oof=out("oof/{model}.parquet"),
        labels=out("labels.json"),
        targets=out("targets.parquet"),
    output:
        train=out("label_correction/{model}.parquet"),
        targets=out("label_correction/{model}.targets.parquet"),
        report=out("label_correction/{model}.changes.csv"),
        summary=out("label_correction/{model}.json"),
    params:
        code=code_digest("generated.label_correction"),
        top_percent=lambda wildcards: LABEL_CORRECTION[wildcards.model].get("top_percent", 5),
        action=lambda wildcards: LABEL_CORRECTION[wildcards.model].get("action", "relabel"),
        # OOF rows: each made by the fold model of its fold, which trained on every other fold (nested: false)
        options=lambda wildcards: cli_flags({"label_source": f"{wildcards.model}/fold{{fold}}"}),
    log:
        out("logs/label_correction/{model}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        LABEL_CORRECTION_COMMAND


rule math_problems:
    output:
        answer_problems_file() if answer_problems_file().endswith("math_problems.parquet") else out("data/math_problems.parquet"),
    params:
        code=code_digest("generated.math_demo"),
        n=lambda wildcards: ANSWERS.get("n_problems", 40),
        seed=lambda wildcards: ANSWERS.get("seed", 0),
    log:
        out("logs/math_problems.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.generated.math_demo --n {params.n} --seed {params.seed} --output {output:q} > {log:q} 2>&1"


rule math_test_problems:
    output:
        out("data/math_test_problems.parquet"),
    params:
        code=code_digest("generated.math_demo"),
        n=lambda wildcards: ANSWERS.get("n_test_problems", 10),
        # another seed than the dev set's, so test problems are new problems
        seed=lambda wildcards: ANSWERS.get("seed", 0) + 1,
    log:
        out("logs/math_test_problems.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.generated.math_demo --test --n {params.n} --seed {params.seed} --output {output:q} > {log:q} 2>&1"


rule answers:
    input:
        model=lambda wildcards: out(f"lms/{wildcards.lm}/base"),
        problems=answer_problems_file(),
    output:
        out("answers/{lm}/{prompt}.parquet"),
    params:
        code=code_digest("generated.answers"),
        options=answer_options,
    threads: lambda wildcards: ANSWERS.get("resources", {}).get("threads", 2)
    resources:
        **ANSWER_STEP_RESOURCES,
    log:
        out("logs/answers/{lm}/{prompt}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".generated.answers --model {input.model:q} --problems {input.problems:q} --prompt-name {wildcards.prompt}"
        " {params.options} --threads {threads} --output {output:q} > {log:q} 2>&1"


rule test_answers:
    input:
        model=lambda wildcards: out(f"lms/{wildcards.lm}/base"),
        problems=lambda wildcards: answer_test_problems_file(),
    output:
        out("test_answers/{lm}/{prompt}.parquet"),
    params:
        code=code_digest("generated.answers"),
        options=lambda wildcards: answer_options(wildcards, split="test"),
    threads: lambda wildcards: ANSWERS.get("resources", {}).get("threads", 2)
    resources:
        **ANSWER_STEP_RESOURCES,
    log:
        out("logs/test_answers/{lm}/{prompt}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".generated.answers --model {input.model:q} --problems {input.problems:q} --prompt-name {wildcards.prompt}"
        " {params.options} --threads {threads} --output {output:q} > {log:q} 2>&1"


rule votes:
    input:
        answers=lambda wildcards: [out(f"answers/{a}.parquet") for a in VOTES[wildcards.vote]["answers"]],
        dev=answer_problems_file(),
    output:
        votes=out("votes/{vote}/votes.parquet"),
        score=out("votes/{vote}/score.json"),
    params:
        code=code_digest("generated.voting"),
        strategies=lambda wildcards: rule_params.vote_flags(VOTES[wildcards.vote]),
        fallback=lambda wildcards: VOTES[wildcards.vote].get("fallback", "majority"),
    log:
        out("logs/votes/{vote}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.generated.voting --answers {input.answers:q} --dev {input.dev:q} {params.strategies}"
        " --fallback {params.fallback:q} --votes {output.votes:q} --score {output.score:q} > {log:q} 2>&1"


rule vote_submission:
    input:
        unpack(vote_submission_inputs),
    output:
        csv=out("submissions/{vote}/submission.csv"),
        manifest=out("submissions/{vote}/manifest.json"),
    params:
        code=code_digest("generated.vote_submission"),
        options=vote_submission_options,
    log:
        out("logs/submissions/{vote}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.generated.vote_submission --name {wildcards.vote} --answers {input.answers:q}"
        " --test-problems {input.test_problems:q} --dev-score {input.dev_score:q} {params.options}"
        " --inputs {input.inputs:q} --artifacts {input.artifacts:q}"
        " --out {output.csv:q} --manifest-out {output.manifest:q} > {log:q} 2>&1"
