# oofline: a Kaggle-style NLP/LLM competition as a graph of file targets.
# Read top to bottom: config, shared functions, then one rule file per stage.
from snakemake.utils import min_version

min_version("9.0")


# The demo config, unless --configfile names another (a recipe, demo/debates.yaml, a frozen record).
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/predictions.smk"
include: "rules/submissions.smk"
include: "rules/sweeps.smk"
include: "rules/generated.smk"
include: "rules/retrieval.smk"
include: "rules/kaggle.smk"
include: "rules/report.smk"


# a step's one-line user error (bad data, a missing model) and its log path end the output of a failed run
# (at exit: Snakemake prints its own summary after this handler)
onerror:
    __import__("atexit").register(print_user_errors, out("logs"), RUN_STARTED)


rule all:
    input:
        final_targets(),
    default_target: True
