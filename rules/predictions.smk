# Predictions: each fold model on its held-out rows and the test set; OOF files, test means, CV scores.


rule predict_fold:
    input:
        model=trained_dir,
        base=base_model,
        train=out("data/train.parquet"),
        test=out("data/test.parquet"),
        folds=out("folds.parquet"),
        labels=out("labels.json"),
    output:
        valid=out("predictions/{model}/{split}/valid.parquet"),
        test=out("predictions/{model}/{split}/test.parquet"),
        speed=speed_record(out("predictions/{model}/{split}/test.parquet")),
    wildcard_constraints:
        model=names_pattern(LORA_MODELS + FULL_MODELS),
    params:
        code=code_digest("predict"),
        fold=lambda wildcards: "full" if wildcards.split == "full" else wildcards.split[len("fold"):],
        base=base_model_path,
        model_config=model_step_config(PREDICT),
    threads: model_threads
    resources:
        **MODEL_STEP_RESOURCES,
    log:
        out("logs/predict/{model}/{split}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".predict --train {input.train:q} --test {input.test:q} --folds {input.folds:q}"
        " --labels {input.labels:q} --fold {params.fold} --model-dir {input.model:q} --base {params.base:q}"
        " --model-config {params.model_config:q} --run-settings {resources.run_settings:q} --valid-out {output.valid:q} --test-out {output.test:q}"
        " --threads {threads} > {log:q} 2>&1"


rule oof:
    input:
        unpack(fold_predictions),
        folds=out("folds.parquet"),
        targets=out("targets.parquet"),
        labels=out("labels.json"),
        prior=out("scores/prior.json"),
    output:
        oof=out("oof/{model}.parquet"),
        test=out("test/{model}.parquet"),
        scores=out("scores/{model}.json"),
    params:
        code=code_digest("oof"),
        metric=lambda wildcards: config["task"]["metric"],  # the schema fills its one default
        test_source=lambda wildcards: test_source(wildcards.model),
        selected_epochs=lambda wildcards, input: rule_params.selected_epoch_flags(input.get("trained", [])),
        # teacher-made labels that are not nested: the CV is optimistic, and scores/MODEL.json says why
        optimistic=lambda wildcards: rule_params.cv_optimistic_flags(config, wildcards.model),
    log:
        out("logs/oof/{model}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.oof --valid {input.valid:q} --test {input.test:q} --folds {input.folds:q}"
        " --targets {input.targets:q} --labels {input.labels:q} --metric {params.metric:q} --name {wildcards.model}"
        " --prior-scores {input.prior:q}"
        " --test-source {params.test_source} {params.selected_epochs} {params.optimistic}"
        " --oof-out {output.oof:q} --test-out {output.test:q} --scores-out {output.scores:q} > {log:q} 2>&1"


rule prior:
    input:
        folds=out("folds.parquet"),
        targets=out("targets.parquet"),
        labels=out("labels.json"),
        test=out("data/test.parquet"),
    output:
        oof=out("prior/oof.parquet"),
        test=out("prior/test.parquet"),
        scores=out("scores/prior.json"),
    params:
        code=code_digest("prior"),
        metric=config.get("task", {}).get("metric", "accuracy"),
    log:
        out("logs/prior.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.prior --folds {input.folds:q} --targets {input.targets:q} --labels {input.labels:q} --test {input.test:q}"
        " --metric {params.metric:q} --oof-out {output.oof:q} --test-out {output.test:q}"
        " --scores-out {output.scores:q} > {log:q} 2>&1"
