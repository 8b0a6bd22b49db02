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


# Both train rules run TRAIN_COMMAND (rules/common.smk); train_full_model below reuses this definition.
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
        **MODEL_STEP_RESOURCES,
        attempt=lambda wildcards, attempt: attempt,
    log:
        out("logs/train/{model}/{split}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        TRAIN_COMMAND


# a full fine-tune trains the same way; only its output folder (model/, not adapter/) and its models differ
use rule train_adapter as train_full_model with:
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
        model_config=model_json,
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
