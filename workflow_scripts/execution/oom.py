"""Out-of-memory handling: a distinct exit code, and the retry plan Snakemake's `attempt` selects.

Interface for GPU steps (the training CLI takes `--attempt`, which the rule fills from Snakemake's
`attempt`, 1 on the first try):

    plan = retry_plan(attempt, micro_batch_size=16, grad_accum_steps=1, mem_mb=16000)
    # attempt 1: 16 x 1, 16000 MB; attempt 2: 8 x 2, 24000 MB; attempt 3: 4 x 4, 36000 MB
    maybe_inject_oom(attempt)          # tests: OOFLINE_INJECT_OOM=N fails attempts 1..N
    ...
    if __name__ == "__main__":
        raise SystemExit(run_cli_with_oom(main))   # OOM -> exit code OOM_EXIT_CODE (75)

The rule's `mem_mb` resource uses the same plan (`mem_mb_for_attempt`), so Slurm gets more memory
on the retry the training step is running with a smaller micro-batch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

from workflow_scripts.errors import OoflineError, run_cli

# EX_TEMPFAIL (sysexits.h): "temporary failure, retry may succeed"; distinct from 1 (crash),
# 2 (OoflineError), 124/137 (timeout/SIGKILL).
OOM_EXIT_CODE = 75
INJECT_ENV = "OOFLINE_INJECT_OOM"
INJECT_USER_ERROR_ENV = "OOFLINE_INJECT_USER_ERROR"
DEFAULT_MEM_GROWTH = 1.5


class InjectedOutOfMemory(RuntimeError):
    """A simulated CUDA OOM, raised when OOFLINE_INJECT_OOM asks for one (tests, CI)."""


@dataclass(frozen=True)
class RetryPlan:
    """Batch geometry and memory for one attempt; micro_batch_size * grad_accum_steps is constant."""

    attempt: int
    micro_batch_size: int
    grad_accum_steps: int
    mem_mb: int

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OoflineError(f"{name} must be a positive integer, got {value!r}")


def mem_mb_for_attempt(mem_mb: int, attempt: int, growth: float = DEFAULT_MEM_GROWTH,
                       max_mem_mb: int | None = None) -> int:
    """Memory (MB) for `attempt`: mem_mb * growth**(attempt-1), capped at max_mem_mb."""
    _check_positive("mem_mb", mem_mb)
    _check_positive("attempt", attempt)
    if growth < 1:
        raise OoflineError(f"mem growth must be >= 1, got {growth}")
    value = math.ceil(mem_mb * growth ** (attempt - 1))
    return min(value, max_mem_mb) if max_mem_mb else value


def retry_plan(attempt: int, micro_batch_size: int, grad_accum_steps: int, mem_mb: int,
               growth: float = DEFAULT_MEM_GROWTH, max_mem_mb: int | None = None) -> RetryPlan:
    """Halve the micro-batch and double grad accumulation per retry, keeping the effective batch.

    The new micro-batch is the largest divisor of `micro_batch_size` not above
    micro_batch_size / 2**(attempt-1), so the effective batch stays exact for any base size
    (12 -> 6 -> 3 -> 1); once it is 1, only memory keeps growing.
    """
    _check_positive("attempt", attempt)
    _check_positive("micro_batch_size", micro_batch_size)
    _check_positive("grad_accum_steps", grad_accum_steps)
    target = max(1, micro_batch_size // 2 ** (attempt - 1))
    micro = max(d for d in range(1, target + 1) if micro_batch_size % d == 0)
    accum = grad_accum_steps * (micro_batch_size // micro)
    return RetryPlan(attempt, micro, accum, mem_mb_for_attempt(mem_mb, attempt, growth, max_mem_mb))


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's CUDA OOM, an injected OOM, a host MemoryError, or a RuntimeError saying so."""
    if isinstance(error, (InjectedOutOfMemory, MemoryError)):
        return True
    torch = sys.modules.get("torch")  # only a step that imported torch can raise its OOM
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in message.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in message)


def maybe_inject_oom(attempt: int, env: dict[str, str] | None = None) -> None:
    """Raise InjectedOutOfMemory when $OOFLINE_INJECT_OOM=N and attempt <= N (N=1: first try fails)."""
    env = os.environ if env is None else env
    raw = env.get(INJECT_ENV, "").strip()
    if not raw:
        return
    try:
        failing_attempts = int(raw)
    except ValueError:
        raise OoflineError(f"{INJECT_ENV} must be an integer (attempts that fail), got {raw!r}") from None
    if attempt <= failing_attempts:
        raise InjectedOutOfMemory(f"CUDA out of memory (injected by {INJECT_ENV}={raw} on attempt {attempt})")


def maybe_inject_user_error(attempt: int, env: dict[str, str] | None = None) -> None:
    """Raise an OoflineError when $OOFLINE_INJECT_USER_ERROR=N and attempt <= N (tests: a retry after a user
    error must not ask for more memory)."""
    env = os.environ if env is None else env
    raw = env.get(INJECT_USER_ERROR_ENV, "").strip()
    if raw and attempt <= int(raw):
        raise OoflineError(f"injected user error on attempt {attempt} ({INJECT_USER_ERROR_ENV}={raw})")


def mem_mb_after_failures(mem_mb: int, attempt: int, user_error_attempts: int,
                          growth: float = DEFAULT_MEM_GROWTH) -> int:
    """Memory for `attempt` when `user_error_attempts` of the earlier ones failed on bad input: those do not
    grow it (an out-of-memory exit, a host OOM-kill or a preemption does, as before)."""
    return mem_mb_for_attempt(mem_mb, max(1, attempt - user_error_attempts), growth)


def run_cli_with_oom(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Like errors.run_cli, and an out-of-memory error exits with OOM_EXIT_CODE after one line."""
    try:
        return run_cli(main, argv)
    except BaseException as error:  # noqa: BLE001 - only OOMs are handled, the rest re-raised
        if not is_out_of_memory(error):
            raise
        print(f"oofline out-of-memory: {error}; exit {OOM_EXIT_CODE} so the rule retries with a smaller "
              "micro-batch and more mem_mb", file=sys.stderr, flush=True)
        return OOM_EXIT_CODE


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.execution.oom",
        description="Print the retry plan (JSON) for an attempt: micro-batch, grad accumulation, mem_mb.",
    )
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--micro-batch-size", type=int, required=True)
    parser.add_argument("--grad-accum-steps", type=int, default=1)
    parser.add_argument("--mem-mb", type=int, required=True)
    parser.add_argument("--mem-growth", type=float, default=DEFAULT_MEM_GROWTH)
    parser.add_argument("--max-mem-mb", type=int, default=None)
    args = parser.parse_args(argv)
    plan = retry_plan(args.attempt, args.micro_batch_size, args.grad_accum_steps, args.mem_mb,
                      args.mem_growth, args.max_mem_mb)
    print(json.dumps({**asdict(plan), "effective_batch_size": plan.effective_batch_size}, sort_keys=True))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
