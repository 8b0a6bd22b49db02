# Retrieval (Eedi-style): per iteration, mine hard negatives, fine-tune an embedder, mine again for the
# reranker, fine-tune the reranker, score mined data with a teacher reranker for the next iteration's
# distillation, and evaluate MAP@k / Recall@k on held-out queries; score the zero-shot embedder beside them,
# and submit the stage `submit` names (best: the highest valid-fold MAP@k).


rule retrieval_demo_raw:
    output:
        queries=out("retrieval/{pipeline}/raw/train.csv"),
        corpus=out("retrieval/{pipeline}/raw/misconception_mapping.csv"),
        test_queries=out("retrieval/{pipeline}/raw/test.csv"),
    params:
        code=code_digest("retrieval.data"),
        options=lambda wildcards: rule_params.retrieval_demo_flags(RETRIEVAL[wildcards.pipeline]),
    log:
        out("logs/retrieval/{pipeline}/demo_raw.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.retrieval.data {params.options} --out-queries {output.queries:q} --out-corpus {output.corpus:q}"
        " --out-test-queries {output.test_queries:q} > {log:q} 2>&1"


# `prepare`: the user's function turns the raw competition files into queries, corpus and test queries
rule retrieval_prepare:
    input:
        unpack(retrieval_raw_inputs),
    output:
        queries=out("retrieval/{pipeline}/prepared/queries.parquet"),
        corpus=out("retrieval/{pipeline}/prepared/corpus.parquet"),
        test_queries=out("retrieval/{pipeline}/prepared/test_queries.parquet"),
    params:
        code=code_digest("prepare"),
        function=lambda wildcards: RETRIEVAL[wildcards.pipeline]["prepare"],
        # the function's code: an edit reruns everything that reads its rows
        prepare_code=lambda wildcards: rule_params.prepare_code(RETRIEVAL[wildcards.pipeline]["prepare"],
                                                                f"retrieval.{wildcards.pipeline}.prepare"),
        required=retrieval_prepare_flags,
    log:
        out("logs/retrieval/{pipeline}/prepare.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.prepare --function {params.function:q} --split train {input.queries:q} {output.queries:q}"
        " --split corpus {input.corpus:q} {output.corpus:q} --split test {input.test_queries:q}"
        " {output.test_queries:q} {params.required} > {log:q} 2>&1"


rule retrieval_data:
    input:
        unpack(retrieval_data_inputs),
    output:
        queries=out("retrieval/{pipeline}/data/queries.parquet"),
        corpus=out("retrieval/{pipeline}/data/corpus.parquet"),
        test_queries=out("retrieval/{pipeline}/data/test_queries.parquet"),
    params:
        code=code_digest("retrieval.data"),
        options=retrieval_data_options,
    log:
        out("logs/retrieval/{pipeline}/data.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.retrieval.data {params.options} --out-queries {output.queries:q} --out-corpus {output.corpus:q}"
        " --out-test-queries {output.test_queries:q} > {log:q} 2>&1"


rule retrieval_folds:
    input:
        out("retrieval/{pipeline}/data/queries.parquet"),
    output:
        out("retrieval/{pipeline}/folds.parquet"),
    params:
        code=code_digest("folds"),
        n_folds=lambda wildcards: RETRIEVAL[wildcards.pipeline].get("n_folds", 5),
        seed=lambda wildcards: RETRIEVAL[wildcards.pipeline].get("seed", 42),
    log:
        out("logs/retrieval/{pipeline}/folds.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.folds --train {input:q} --scheme random --n-folds {params.n_folds} --seed {params.seed}"
        " --out {output:q} > {log:q} 2>&1"


rule retrieval_base_model:
    output:
        directory(out("retrieval/{pipeline}/base/{base}")),
    params:
        code=code_digest("prepare_model"),
        source=lambda wildcards: RETRIEVAL[wildcards.pipeline]["models"][wildcards.base],
    log:
        out("logs/retrieval/{pipeline}/base/{base}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        "{PY}.prepare_model --source {params.source:q} --out {output:q} > {log:q} 2>&1"


rule mine_negatives:
    input:
        unpack(mining_inputs),
    output:
        out("retrieval/{pipeline}/iter{iter}/{purpose}mined.jsonl"),
    params:
        code=code_digest("retrieval.mining"),
        options=mining_options,
    threads: retrieval_threads
    resources:
        **RETRIEVAL_STEP_RESOURCES,
    log:
        out("logs/retrieval/{pipeline}/iter{iter}/{purpose}mine.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".retrieval.mining --queries {input.queries:q} --corpus {input.corpus:q} --folds {input.folds:q}"
        " --embedder {input.embedder:q} {params.options} --output {output:q} > {log:q} 2>&1"


rule teacher_scores:
    input:
        mined=out("retrieval/{pipeline}/iter{iter}/{purpose}mined.jsonl"),
        reranker=teacher_reranker,
    output:
        out("retrieval/{pipeline}/iter{iter}/{purpose}scored.jsonl"),
    params:
        code=code_digest("retrieval.teacher_scores"),
        options=lambda wildcards: reranker_inference_options(wildcards.pipeline),
    threads: retrieval_threads
    resources:
        **RETRIEVAL_STEP_RESOURCES,
    log:
        out("logs/retrieval/{pipeline}/iter{iter}/{purpose}teacher.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".retrieval.teacher_scores --input {input.mined:q} --output {output:q}"
        " --reranker {input.reranker:q}/merged {params.options} > {log:q} 2>&1"


rule finetune_retriever:
    input:
        unpack(finetune_inputs),
    output:
        directory(out("retrieval/{pipeline}/iter{iter}/{role}")),
    params:
        code=code_digest("retrieval.finetune"),
        options=finetune_options,
        # select_checkpoint best: " --validation ..." (the valid fold its epochs are scored on); else empty
        validation=checkpoint_validation_options,
        # one process per GPU of the job: a param, as the batch is batch_size per process (a function of
        # wildcards only, as Snakemake does not track a param whose function takes `resources`)
        processes=lambda wildcards: max(1, int(FINETUNE_RETRIEVER_RESOURCES["gpu"](wildcards) or 0)),
    threads: retrieval_threads
    resources:
        **FINETUNE_RETRIEVER_RESOURCES,
    log:
        out("logs/retrieval/{pipeline}/iter{iter}/{role}.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".retrieval.finetune --kind {wildcards.role} --base-model {input.base:q}"
        " --train-data {input.data:q} {params.options} --processes {params.processes}"
        " --output-dir {output:q}{params.validation} > {log:q} 2>&1"


rule evaluate_retrieval:
    input:
        queries=out("retrieval/{pipeline}/data/queries.parquet"),
        corpus=out("retrieval/{pipeline}/data/corpus.parquet"),
        test_queries=out("retrieval/{pipeline}/data/test_queries.parquet"),
        folds=out("retrieval/{pipeline}/folds.parquet"),
        embedder=out("retrieval/{pipeline}/iter{iter}/embedder"),
        reranker=out("retrieval/{pipeline}/iter{iter}/reranker"),
    output:
        oof=out("retrieval/{pipeline}/iter{iter}/oof.parquet"),
        score=out("retrieval/{pipeline}/iter{iter}/score.json"),
        test=out("retrieval/{pipeline}/iter{iter}/test.parquet"),
    params:
        code=code_digest("retrieval.eval"),
        options=evaluation_options,
    threads: retrieval_threads
    resources:
        **RETRIEVAL_STEP_RESOURCES,
    log:
        out("logs/retrieval/{pipeline}/iter{iter}/evaluate.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".retrieval.eval --queries {input.queries:q} --corpus {input.corpus:q} --folds {input.folds:q}"
        " --embedders {input.embedder:q}/merged --rerankers {input.reranker:q}/merged {params.options}"
        " --test-queries {input.test_queries:q} --oof-out {output.oof:q} --score-out {output.score:q}"
        " --test-out {output.test:q} > {log:q} 2>&1"


rule evaluate_zero_shot:
    input:
        queries=out("retrieval/{pipeline}/data/queries.parquet"),
        corpus=out("retrieval/{pipeline}/data/corpus.parquet"),
        test_queries=out("retrieval/{pipeline}/data/test_queries.parquet"),
        folds=out("retrieval/{pipeline}/folds.parquet"),
        embedder=zero_shot_embedder,
    output:
        oof=out("retrieval/{pipeline}/zero_shot/oof.parquet"),
        score=out("retrieval/{pipeline}/zero_shot/score.json"),
        test=out("retrieval/{pipeline}/zero_shot/test.parquet"),
    params:
        code=code_digest("retrieval.eval"),
        options=lambda wildcards: rule_params.zero_shot_flags(RETRIEVAL[wildcards.pipeline]),
    threads: retrieval_threads
    resources:
        **RETRIEVAL_STEP_RESOURCES,
    log:
        out("logs/retrieval/{pipeline}/zero_shot/evaluate.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".retrieval.eval --queries {input.queries:q} --corpus {input.corpus:q} --folds {input.folds:q}"
        " --embedders {input.embedder:q} {params.options} --test-queries {input.test_queries:q}"
        " --oof-out {output.oof:q} --score-out {output.score:q} --test-out {output.test:q} > {log:q} 2>&1"


rule retrieval_stages:
    input:
        stage_scores,
    output:
        stages=out("retrieval/{pipeline}/stages.json"),
        submission_stage=out("retrieval/{pipeline}/submission_stage.json"),
    params:
        code=code_digest("retrieval.stages"),
        plan=lambda wildcards: json.dumps(stage_plan(wildcards.pipeline), sort_keys=True),
        submit=lambda wildcards: rule_params.retrieval_submit(RETRIEVAL[wildcards.pipeline]),
        top_n=lambda wildcards: int(RETRIEVAL[wildcards.pipeline].get("top_n", 50)),
    log:
        out("logs/retrieval/{pipeline}/stages.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.retrieval.stages --pipeline {wildcards.pipeline} --plan {params.plan:q} --submit {params.submit:q}"
        " --top-n {params.top_n} --out-stages {output.stages:q} --out-submission-stage {output.submission_stage:q}"
        " > {log:q} 2>&1"


rule retrieval_submission:
    input:
        stage=out("retrieval/{pipeline}/submission_stage.json"),
        # every stage's test rankings: the stage is chosen on scores, after the graph is built
        test=stage_rankings,
        data=lambda wildcards: [out(f"retrieval/{wildcards.pipeline}/data/{n}.parquet") for n in ("queries", "corpus", "test_queries")]
        + list(retrieval_data_inputs(wildcards).values()),  # the user's files too, when the pipeline reads files
        artifacts=retrieval_artifacts,
    output:
        csv=out("submissions/{pipeline}/submission.csv"),
        manifest=out("submissions/{pipeline}/manifest.json"),
    wildcard_constraints:
        pipeline=names_pattern(config.get("retrieval") or {}),
    params:
        code=code_digest("retrieval.submission"),
        config_slice=lambda wildcards: json.dumps(rule_params.retrieval_config_slice(config, wildcards.pipeline), sort_keys=True),
        id_column=lambda wildcards: RETRIEVAL[wildcards.pipeline].get("id_column", "id"),
        column=lambda wildcards: RETRIEVAL[wildcards.pipeline].get("prediction_column", "ranked_ids"),
        base_models=lambda wildcards: rule_params.retrieval_base_models(RETRIEVAL[wildcards.pipeline]),
    log:
        out("logs/retrieval/{pipeline}/submission.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.retrieval.submission --name {wildcards.pipeline} --stage {input.stage:q} --id-column {params.id_column:q}"
        " --prediction-column {params.column:q} --config-slice {params.config_slice:q} --inputs {input.data:q}"
        " --artifacts {input.artifacts:q} {input.test:q} --scores {input.stage:q} {params.base_models}"
        " --out {output.csv:q} --manifest-out {output.manifest:q} > {log:q} 2>&1"
