# Data: demo files (when configured), validated clean data, label layout, targets, folds.


if "demo" in config:

    rule prepare_demo:
        output:
            train=config["data"]["train"],
            test=config["data"]["test"],
            sample_submission=config["data"]["sample_submission"],
        params:
            code=code_digest("prepare_demo"),
            dataset=config["demo"]["dataset"],
            n_train=config["demo"]["n_train"],
            n_test=config["demo"]["n_test"],
            seed=config["demo"]["seed"],
            columns=demo_submission_columns(),
            balanced="--balanced" if config["demo"].get("balanced") else "",
        log:
            out("logs/prepare_demo.log"),
        conda:
            "../envs/cpu.yaml"
        container:
            CPU_CONTAINER
        shell:
            "{PY}.prepare_demo --dataset {params.dataset} --n-train {params.n_train} --n-test {params.n_test}"
            " --seed {params.seed} --train-out {output.train:q} --test-out {output.test:q}"
            " --sample-submission-out {output.sample_submission:q} --submission-columns {params.columns:q} {params.balanced}"
            " > {log:q} 2>&1"


if "task" in config and config["data"].get("prepare"):

    # data.prepare: the user's function turns the raw files into task rows (shipped in a Kaggle package too)
    rule prepare_raw_data:
        input:
            train=config["data"]["train"],
            test=config["data"]["test"],
        output:
            train=out("data/prepared/train.parquet"),
            test=out("data/prepared/test.parquet"),
        params:
            code=code_digest("prepare"),
            function=config["data"]["prepare"],
            # the function's code: an edit reruns everything that reads its rows
            prepare_code=rule_params.prepare_code(config["data"]["prepare"], "data.prepare"),
            required=classification_required_flags(),
        log:
            out("logs/prepare_raw_data.log"),
        conda:
            "../envs/cpu.yaml"
        container:
            CPU_CONTAINER
        shell:
            "{PY}.prepare --function {params.function:q} --split train {input.train:q} {output.train:q}"
            " --split test {input.test:q} {output.test:q} {params.required} > {log:q} 2>&1"


if "task" in config:

    rule prepare_data:
        input:
            train=task_rows_file("train"),
            test=task_rows_file("test"),
        output:
            train=out("data/train.parquet"),
            test=out("data/test.parquet"),
            labels=out("labels.json"),
            targets=out("targets.parquet"),
        params:
            code=code_digest("data"),
            task=lambda wildcards: task_json(),
        log:
            out("logs/prepare_data.log"),
        conda:
            "../envs/cpu.yaml"
        container:
            CPU_CONTAINER
        shell:
            "{PY}.data --train {input.train:q} --test {input.test:q} --task {params.task:q}"
            " --train-out {output.train:q} --test-out {output.test:q} --labels-out {output.labels:q}"
            " --targets-out {output.targets:q} > {log:q} 2>&1"


    rule folds:
        input:
            train=rules.prepare_data.output.train,
            targets=rules.prepare_data.output.targets,
            labels=rules.prepare_data.output.labels,
        output:
            out("folds.parquet"),
        params:
            code=code_digest("folds"),
            scheme=config["folds"]["scheme"],
            n_folds=config["folds"]["n_folds"],
            seed=config["folds"]["seed"],
            group=fold_group_option(),
        log:
            out("logs/folds.log"),
        conda:
            "../envs/cpu.yaml"
        container:
            CPU_CONTAINER
        shell:
            "{PY}.folds --train {input.train:q} --targets {input.targets:q} --labels {input.labels:q}"
            " --scheme {params.scheme} --n-folds {params.n_folds} --seed {params.seed} {params.group}"
            " --out {output:q} > {log:q} 2>&1"
