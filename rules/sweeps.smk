# Sweeps: the table of each sweep's variants (ordinary models and ensembles built by the other rule files).


rule sweep_table:
    input:
        unpack(sweep_inputs),
    output:
        csv=out("sweeps/{sweep}.csv"),
        md=out("sweeps/{sweep}.md"),
        json=out("sweeps/{sweep}.json"),
    params:
        code=code_digest("sweep_table"),
        options=sweep_options,
        metric=lambda wildcards: config["task"]["metric"],
        lb=lambda wildcards, input: rule_params.optional_input_flag("lb_scores", input.get("lb")),
    log:
        out("logs/sweeps/{sweep}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.sweep_table {params.options} --metric {params.metric:q} {params.lb}"
        " --out-csv {output.csv:q} --out-md {output.md:q} --out-json {output.json:q} > {log:q} 2>&1"
