# Models: materialised bases, per-fold (and full-data) fine-tunes, adapters merged into their base.


rule prepare_model:
    input:
        corpus=out("data/train.parquet"),
    output:
        directory(out("models/{model}/base")),
    params:
        code=code_digest("prepare_model"),
        source=lambda wildcards: MODELS[wildcards.model]["source"],
        seed=lambda wildcards: MODELS[wildcards.model]["seed"],
    log:
        out("logs/prepare_model/{model}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        "{PY}.prepare_model --source {params.source:q} --out {output:q} --seed {params.seed}"
        " --corpus {input.corpus:q} > {log:q} 2>&1"


# Both train rules run TRAIN_COMMAND (rules/common.smk): train_adapter trains LoRA/QLoRA adapters,
# train_all_weights below (the same definition) a full fine-tune; either on one fold's rows or, with the
# key train_full, on every row (split `full`).
rule train_adapter:
    input:
        unpack(train_inputs),
    output:
        directory(out("models/{model}/{split}/adapter")),
    wildcard_constraints:
        model=names_pattern(LORA_MODELS),
    params:
        code=code_digest("train"),
        **train_params,
    threads: model_threads
    # on Slurm the retry is a new job (so it gets the larger mem_mb), not a retry inside the job
    retries: 0 if workflow.remote_exec else 2
    resources:
        **TRAIN_STEP_RESOURCES,
        attempt=lambda wildcards, attempt: attempt,
    log:
        out("logs/train/{model}/{split}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        TRAIN_COMMAND


# a full fine-tune (every weight trains) runs the same way; only its output folder (model/, not adapter/)
# and its models differ
use rule train_adapter as train_all_weights with:
    output:
        directory(out("models/{model}/{split}/model")),
    wildcard_constraints:
        model=names_pattern(FULL_MODELS),


rule merge_adapter:
    input:
        adapter=out("models/{model}/{split}/adapter"),
        base=base_model,
        labels=out("labels.json"),
    output:
        directory(out("models/{model}/{split}/merged")),
    params:
        code=code_digest("merge"),
        base=base_model_path,
        model_config=model_step_config(MERGE),
    resources:
        **MODEL_STEP_RESOURCES,
    log:
        out("logs/merge/{model}/{split}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".merge --adapter {input.adapter:q} --base {params.base:q} --labels {input.labels:q}"
        " --model-config {params.model_config:q}"
        " --out {output:q} > {log:q} 2>&1"


rule tfidf_linear_fold:
    input:
        train=out("data/train.parquet"),
        test=out("data/test.parquet"),
        folds=out("folds.parquet"),
        targets=out("targets.parquet"),
        labels=out("labels.json"),
    output:
        model=directory(out("models/{model}/{split}/linear")),
        valid=out("predictions/{model}/{split}/valid.parquet"),
        test=out("predictions/{model}/{split}/test.parquet"),
        speed=speed_record(out("predictions/{model}/{split}/test.parquet")),
    wildcard_constraints:
        model=names_pattern(TFIDF_MODELS),
        split=r"fold\d+",
    params:
        code=code_digest("linear_models"),
        fold=lambda wildcards: wildcards.split[len("fold"):],
        model_config=model_step_config(FIT),
    log:
        out("logs/train/{model}/{split}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.linear_models --train {input.train:q} --test {input.test:q} --folds {input.folds:q}"
        " --targets {input.targets:q} --labels {input.labels:q} --fold {params.fold}"
        " --model-config {params.model_config:q} --model-out {output.model:q} --valid-out {output.valid:q}"
        " --test-out {output.test:q} > {log:q} 2>&1"


rule embed_texts:
    input:
        train=out("data/train.parquet"),
        test=out("data/test.parquet"),
        base=base_model,
    output:
        embeddings=out("embeddings/{model}.safetensors"),
        speed=speed_record(out("embeddings/{model}.safetensors")),
    wildcard_constraints:
        model=names_pattern(EMBEDDING_HEAD_MODELS),
    params:
        code=code_digest("embedding_head"),
        base=base_model_path,
        model_config=model_step_config(EMBED),
    threads: model_threads
    resources:
        **MODEL_STEP_RESOURCES,
    log:
        out("logs/embed/{model}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".embedding_head embed --train {input.train:q} --test {input.test:q} --base {params.base:q}"
        " --model-config {params.model_config:q} --run-settings {resources.run_settings:q} --out {output.embeddings:q} --threads {threads} > {log:q} 2>&1"


rule embedding_head_fold:
    input:
        embeddings=out("embeddings/{model}.safetensors"),
        folds=out("folds.parquet"),
        targets=out("targets.parquet"),
        labels=out("labels.json"),
    output:
        model=directory(out("models/{model}/{split}/head")),
        valid=out("predictions/{model}/{split}/valid.parquet"),
        test=out("predictions/{model}/{split}/test.parquet"),
        speed=speed_record(out("predictions/{model}/{split}/test.parquet")),
    wildcard_constraints:
        model=names_pattern(EMBEDDING_HEAD_MODELS),
        split=r"fold\d+",
    params:
        code=code_digest("embedding_head"),
        fold=lambda wildcards: wildcards.split[len("fold"):],
        model_config=model_step_config(FIT),
    log:
        out("logs/train/{model}/{split}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.embedding_head fit --embeddings {input.embeddings:q} --folds {input.folds:q} --targets {input.targets:q}"
        " --labels {input.labels:q} --fold {params.fold} --model-config {params.model_config:q}"
        " --model-out {output.model:q} --valid-out {output.valid:q} --test-out {output.test:q} > {log:q} 2>&1"
