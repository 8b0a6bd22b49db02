"""Planning speed: what Snakemake recomputes per job that never changes between jobs."""
from __future__ import annotations

import functools


def cache_function_signatures() -> None:
    """Compute each rule function's signature once instead of once per job.

    Snakemake calls `snakemake.common.get_function_params(func)` (an `inspect.signature`) for every input, param and
    resource function of every job it plans; a function's signature cannot change, so the answer is cached per
    function. Both modules that look it up get the cached one (rules.py imported the name)."""
    import snakemake.common
    import snakemake.rules

    original = snakemake.common.get_function_params
    if getattr(original, "cache_info", None):  # a second Snakefile parse in the same process
        return
    cached = functools.lru_cache(maxsize=None)(original)
    snakemake.common.get_function_params = cached
    snakemake.rules.get_function_params = cached
