# Report figures: one file per plot, each marked for `snakemake --report report.html`.


rule plot_cv_folds:
    input:
        [out(f"scores/{m}.json") for m in MODELS],
    output:
        report(out("plots/cv_folds.png"), caption="../report/cv_folds.rst", category="1. Models",
               labels={"figure": "CV per fold"}),
    params:
        code=code_digest("plots"),
    log:
        out("logs/plots/cv_folds.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.plots cv-folds --scores {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_ensembles:
    input:
        [out(f"ensembles/{e}/score.json") for e in ENSEMBLES],
    output:
        report(out("plots/ensembles.png"), caption="../report/ensembles.rst", category="2. Ensembles",
               labels={"figure": "in-sample vs out-of-sample"}),
    params:
        code=code_digest("plots"),
    log:
        out("logs/plots/ensembles.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.plots ensembles --scores {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_thresholds:
    input:
        curves=out("thresholds/{source}.curves.parquet"),
        thresholds=out("thresholds/{source}.json"),
    output:
        report(out("plots/thresholds/{source}.png"), caption="../report/thresholds.rst",
               category="3. Thresholds", labels={"source": "{source}", "figure": "F1 vs threshold"}),
    params:
        code=code_digest("plots"),
    log:
        out("logs/plots/thresholds/{source}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.plots thresholds --curves {input.curves:q} --thresholds {input.thresholds:q} --out {output:q}"
        " > {log:q} 2>&1"


rule plot_cv_lb:
    input:
        out("leaderboard.csv"),
    output:
        report(out("plots/cv_lb.png"), caption="../report/cv_lb.rst", category="4. Leaderboard",
               labels={"figure": "CV vs LB"}),
    params:
        code=code_digest("plots"),
    log:
        out("logs/plots/cv_lb.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.plots cv-lb --leaderboard {input:q} --out {output:q} > {log:q} 2>&1"


rule leaderboard_html:
    input:
        out("leaderboard.csv"),
    output:
        report(out("plots/leaderboard.html"), caption="../report/leaderboard.rst", category="4. Leaderboard",
               labels={"figure": "table"}),
    params:
        code=code_digest("plots"),
    log:
        out("logs/plots/leaderboard_html.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.plots leaderboard-html --leaderboard {input:q} --out {output:q} > {log:q} 2>&1"


rule plot_sweep:
    input:
        out("sweeps/{sweep}.json"),
    output:
        report(out("plots/sweeps/{sweep}.png"), caption="../report/sweep.rst", category="5. Sweeps",
               labels={"sweep": "{sweep}", "figure": "metric vs each swept key"}),
    params:
        code=code_digest("plots"),
    log:
        out("logs/plots/sweeps/{sweep}.log"),
    conda:
        "../envs/cpu.yaml"
    container:
        CPU_CONTAINER
    shell:
        "{PY}.plots sweep --sweep {input:q} --out {output:q} > {log:q} 2>&1"
