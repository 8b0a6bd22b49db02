# Kaggle code-competition packages: a submission's dataset (models, weights, thresholds, oofline's wheel) and
# an offline notebook that rebuilds it on the hidden test, plus the runtime plan. Nothing is pushed.


rule kaggle_package:
    input:
        kaggle_inputs,
    output:
        dataset=directory(out("kaggle/{submission}/dataset")),
        notebook=directory(out("kaggle/{submission}/notebook")),
        plan=out("kaggle/{submission}/plan.json"),
    wildcard_constraints:
        submission=names_pattern(KAGGLE_SUBMISSIONS),
    params:
        code=code_digest("kaggle.package"),
        # the dataset ships the whole package as a wheel: any code change changes it
        wheel=OOFLINE_CODE,
        spec=lambda wildcards: json.dumps(kaggle_spec(wildcards), sort_keys=True),
    log:
        out("logs/kaggle/{submission}.log"),
    # building times the imports of torch and transformers (the notebook's start-up) and reads model cards
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        "{PY}.kaggle.package build --spec {params.spec:q} --dataset-out {output.dataset:q}"
        " --notebook-out {output.notebook:q} --plan-out {output.plan:q} > {log:q} 2>&1"


# a retrieval package's fixed corpus embedded once at build time (the notebook embeds only the queries), the
# in-context examples as the evaluation step drew them, and the public test timed for the plan
rule kaggle_corpus_embeddings:
    input:
        kaggle_corpus_inputs,
    output:
        embeddings=out("kaggle/{submission}/corpus/embeddings.safetensors"),
        icl_examples=out("kaggle/{submission}/corpus/icl_examples.json"),
        speeds=out("kaggle/{submission}/corpus/speeds.json"),
    wildcard_constraints:
        submission=names_pattern(KAGGLE_RETRIEVAL),
    params:
        code=code_digest("kaggle.corpus_embeddings"),
        options=kaggle_corpus_options,
    threads: lambda wildcards: (RETRIEVAL[wildcards.submission].get("resources") or {}).get("threads", 2)
    resources:
        **KAGGLE_CORPUS_RESOURCES,
    log:
        out("logs/kaggle/{submission}.corpus.log"),
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        ON_GPUS + ".kaggle.corpus_embeddings {params.options} --embeddings-out {output.embeddings:q}"
        " --icl-out {output.icl_examples:q} --speeds-out {output.speeds:q} > {log:q} 2>&1"


rule kaggle_record_package:
    input:
        record=f"{REGISTRY_DIR}/{{record}}.yaml",
    output:
        dataset=directory(out("kaggle/{record}/dataset")),
        notebook=directory(out("kaggle/{record}/notebook")),
        plan=out("kaggle/{record}/plan.json"),
    wildcard_constraints:
        record=names_pattern(KAGGLE_RECORDS),
    params:
        code=code_digest("kaggle.package"),
        wheel=OOFLINE_CODE,
        kaggle=lambda wildcards: json.dumps(KAGGLE[wildcards.record], sort_keys=True),  # as written: the rebuild validates it
        scratch=lambda wildcards: out(f"kaggle/{wildcards.record}.scratch"),
        snakefile=workflow.main_snakefile,
    threads: verify_threads
    log:
        out("logs/kaggle/{record}.log"),
    # the rebuild runs the record's whole graph (training included), as verify does
    conda:
        "../envs/train.yaml"
    container:
        TRAIN_CONTAINER
    shell:
        "{PY}.kaggle.package record --record {input.record:q} --kaggle {params.kaggle:q}"
        " --snakefile {params.snakefile:q} --scratch {params.scratch:q} --cores {threads}"
        " --dataset-out {output.dataset:q} --notebook-out {output.notebook:q} --plan-out {output.plan:q} > {log:q} 2>&1"
