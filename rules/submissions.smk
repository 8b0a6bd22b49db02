# Ensembles, thresholds, submissions with manifests, the frozen registry and its verification, the leaderboard.


rule ensemble:
    input:
        unpack(ensemble_inputs),
    output:
        oof=out("ensembles/{ensemble}/oof.parquet"),
        test=out("ensembles/{ensemble}/test.parquet"),
        weights=out("ensembles/{ensemble}/weights.json"),
        score=out("ensembles/{ensemble}/score.json"),
    params:
        code=code_digest("ensemble"),
        names=lambda wildcards: ensemble_members(wildcards.ensemble),
        weights=lambda wildcards: ensemble_weights(wildcards.ensemble),
        method=lambda wildcards: ENSEMBLES[wildcards.ensemble].get("method", "mean"),
        blend=lambda wildcards: ENSEMBLES[wildcards.ensemble].get("blend", "mean"),
        top_k=lambda wildcards: rule_params.ensemble_flags(ENSEMBLES[wildcards.ensemble]),
        metric=lambda wildcards: config["task"]["metric"],  # the schema fills its one default
        stack_c=lambda wildcards: float(ENSEMBLES[wildcards.ensemble].get("C", 1.0)),
    log:
        out("logs/ensembles/{ensemble}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.ensemble --name {wildcards.ensemble} --names {params.names:q} --oof {input.oof:q} --test {input.test:q}"
        " --weights {params.weights} --method {params.method:q} --blend {params.blend:q} {params.top_k} --stack-c {params.stack_c}"
        " --labels {input.labels:q} --targets {input.targets:q} --metric {params.metric:q} --folds {input.folds:q}"
        " --oof-out {output.oof:q} --test-out {output.test:q} --weights-out {output.weights:q}"
        " --score-out {output.score:q} > {log:q} 2>&1"


rule thresholds:
    input:
        unpack(threshold_inputs),
    output:
        thresholds=out("thresholds/{source}.json"),
        curves=out("thresholds/{source}.curves.parquet"),
    params:
        code=code_digest("thresholds"),
        options=threshold_options,
        metric=lambda wildcards: config["task"]["metric"],  # the schema fills its one default
    log:
        out("logs/thresholds/{source}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.thresholds --oof {input.oof:q} --labels {input.labels:q} --targets {input.targets:q}"
        " {params.options} --metric {params.metric:q} --out {output.thresholds:q} --curves-out {output.curves:q}"
        " > {log:q} 2>&1"


rule submission:
    input:
        unpack(submission_inputs),
    output:
        csv=out("submissions/{submission}/submission.csv"),
        manifest=out("submissions/{submission}/manifest.json"),
    params:
        code=code_digest("submission"),
        options=submission_options,
    log:
        out("logs/submissions/{submission}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.submission --name {wildcards.submission} --test {input.test:q} --test-data {input.test_data:q}"
        " --labels {input.labels:q} {params.options}"
        " --inputs {input.data:q} --artifacts {input.artifacts:q} --scores {input.score:q}"
        " --out {output.csv:q} --manifest-out {output.manifest:q} > {log:q} 2>&1"


rule register_submission:
    input:
        # ancient: a frozen record is written once and never rewritten by a later config change
        manifest=lambda wildcards: ancient(out(f"submissions/{REGISTER[wildcards.record]}/manifest.json")),
    output:
        f"{REGISTRY_DIR}/{{record}}.yaml",
    wildcard_constraints:
        # only records not frozen yet: a record on disk (frozen earlier, by hand, or no longer listed) is an input
        # that no rule makes, so no later change of config, code or this rule re-freezes it
        record=names_pattern(records_to_freeze()),
    # no `code` param, unlike every other rule: a frozen record is never rewritten by a code change
    params:
        submission=lambda wildcards: REGISTER[wildcards.record],
        shape=lambda wildcards: rule_params.submission_shapes(config)[REGISTER[wildcards.record]],
        frozen_config=lambda wildcards: frozen_config(),
    log:
        out("logs/register/{record}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.registry freeze --name {wildcards.record} --submission {params.submission:q} --shape {params.shape}"
        " --config {params.frozen_config:q} --manifest {input.manifest:q} --out {output:q} > {log:q} 2>&1"


rule verify_submission:
    input:
        record=f"{REGISTRY_DIR}/{{record}}.yaml",
    output:
        out("verify/{record}.ok"),
    params:
        code=code_digest("registry"),
        snakefile=workflow.main_snakefile,
    threads: verify_threads
    resources:
        # a scratch folder is where the job works, not what it makes: untracked
        scratch=lambda wildcards: out(f"verify/{wildcards.record}.scratch"),
    log:
        out("logs/verify/{record}.log"),
    # the rebuild runs its whole graph (training included) in this image: it has snakemake and every step's deps
    container:
        TRAIN_CONTAINER
    shell:
        "{PY}.registry verify --record {input.record:q} --snakefile {params.snakefile:q}"
        " --scratch {resources.scratch:q} --cores {threads} --out {output:q} > {log:q} 2>&1"


rule leaderboard:
    input:
        unpack(leaderboard_inputs),
    output:
        csv=out("leaderboard.csv"),
        md=out("leaderboard.md"),
    params:
        code=code_digest("leaderboard"),
        lb=lambda wildcards, input: rule_params.optional_input_flag("lb_scores", input.get("lb")),
        prior=lambda wildcards, input: rule_params.optional_input_flag("prior_scores", input.get("prior")),
    log:
        out("logs/leaderboard.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.leaderboard --model-scores {input.models:q} --ensemble-scores {input.ensembles:q}"
        " --manifests {input.manifests:q} --retrieval-stages {input.retrieval:q} --sweeps {input.sweeps:q} {params.prior}"
        " {params.lb} --out-csv {output.csv:q} --out-md {output.md:q} > {log:q} 2>&1"
