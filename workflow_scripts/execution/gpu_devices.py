"""Give each GPU job its own devices on a workstation; leave Slurm's assignment alone.

`snakemake --resources gpu=N` only counts GPUs (snakemake#281), so concurrent jobs would all land
on GPU 0. This allocator takes an exclusive `fcntl.flock` on one lock file per device; the kernel
drops the lock when the holding process dies (even on SIGKILL), so a killed job frees its GPUs.

Used as a wrapper that execs the step while holding the locks:

    python -m workflow_scripts.execution.gpu_devices --gpus 1 -- python -m workflow_scripts.train ...
    python -m workflow_scripts.execution.gpu_devices --gpus 2 --torchrun -- python -m workflow_scripts.train ...
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from workflow_scripts.errors import OoflineError, run_cli

DEVICES_ENV = "OOFLINE_GPU_DEVICES"  # comma-separated device indices; overrides nvidia-smi
LOCK_DIR_ENV = "OOFLINE_GPU_LOCK_DIR"
ALLOCATED_ENV = "OOFLINE_GPU_ALLOCATED"  # set for the wrapped command, so a nested wrapper is a no-op


def default_lock_dir() -> Path:
    """The lock directory: $OOFLINE_GPU_LOCK_DIR, else one per user under the system temp dir."""
    if os.environ.get(LOCK_DIR_ENV):
        return Path(os.environ[LOCK_DIR_ENV])
    return Path(tempfile.gettempdir()) / f"oofline-gpu-locks-{os.getuid()}"


def parse_device_list(text: str, source: str) -> list[str]:
    """Split '0,1, 3' into ['0', '1', '3']; a malformed entry is an OoflineError naming `source`."""
    devices = [item.strip() for item in text.split(",") if item.strip()]
    for device in devices:
        # indices or UUIDs (GPU-xxxx / MIG-xxxx) are what CUDA_VISIBLE_DEVICES accepts
        if not (device.isdigit() or device.startswith(("GPU-", "MIG-"))):
            raise OoflineError(
                f"{source}: bad GPU device {device!r} in {text!r} "
                "(expected comma-separated indices like '0,1,2' or GPU-/MIG- UUIDs)"
            )
    if len(set(devices)) != len(devices):
        raise OoflineError(f"{source}: duplicate GPU device in {text!r}")
    return devices


def discover_devices(env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this machine offers: $OOFLINE_GPU_DEVICES, else $CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    env = os.environ if env is None else env
    if env.get(DEVICES_ENV) is not None:
        return parse_device_list(env[DEVICES_ENV], DEVICES_ENV)
    if env.get("CUDA_VISIBLE_DEVICES") is not None:
        # the user narrowed the pool for this snakemake run (CUDA_VISIBLE_DEVICES=2,3 snakemake ...)
        return parse_device_list(env["CUDA_VISIBLE_DEVICES"], "CUDA_VISIBLE_DEVICES")
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return []
    try:
        listing = subprocess.run(
            [nvidia_smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as error:
        raise OoflineError(f"nvidia-smi failed to list GPUs ({error}); set {DEVICES_ENV}=0,1,... instead")
    return parse_device_list(",".join(listing.split()), "nvidia-smi")


def managed_by_scheduler(env: Mapping[str, str] | None = None) -> bool:
    """True when a scheduler (Slurm) or an outer wrapper already chose this job's GPUs."""
    env = os.environ if env is None else env
    return bool(env.get("SLURM_JOB_ID")) or bool(env.get(ALLOCATED_ENV))


@dataclass
class GpuLease:
    """Devices held by this process; the locks last until release() or until the process dies."""

    devices: list[str]
    lock_dir: Path
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.devices)

    def make_inheritable(self) -> None:
        """Keep the lock fds open across exec, so the exec'd command holds the locks."""
        for fd in self._fds:
            os.set_inheritable(fd, True)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the last fd of the open file drops the flock
        self._fds.clear()

    def __enter__(self) -> "GpuLease":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_file(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"gpu-{device}.lock"


def _holder(lock_dir: Path, device: str) -> str:
    try:
        return _lock_file(lock_dir, device).read_text().strip() or "?"
    except OSError:
        return "?"


def _try_lock(path: Path) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    # who holds it, for the "waiting" and timeout messages of other jobs
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
    return fd


def try_acquire(n_gpus: int, devices: Sequence[str], lock_dir: Path) -> GpuLease | None:
    """Lock `n_gpus` free devices (lowest first), all or none; None when fewer are free."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    taken: list[str] = []
    fds: list[int] = []
    for device in devices:
        if len(taken) == n_gpus:
            break
        fd = _try_lock(_lock_file(lock_dir, device))
        if fd is not None:
            taken.append(device)
            fds.append(fd)
    if len(taken) < n_gpus:
        # all-or-none, so two 2-GPU jobs never each hold one GPU and wait forever
        for fd in fds:
            os.close(fd)
        return None
    return GpuLease(devices=taken, lock_dir=lock_dir, _fds=fds)


def acquire(
    n_gpus: int,
    devices: Sequence[str],
    lock_dir: Path,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
    progress_every_s: float = 30.0,
) -> GpuLease:
    """Wait until `n_gpus` of `devices` are free and lock them; OoflineError after `timeout_s` seconds."""
    if n_gpus < 1:
        raise OoflineError(f"--gpus must be at least 1 to lock devices, got {n_gpus}")
    if n_gpus > len(devices):
        raise OoflineError(
            f"job asks for {n_gpus} GPUs but only {len(devices)} exist ({','.join(devices) or 'none'}); "
            "lower the model's `gpu` in config.yaml or set OOFLINE_GPU_DEVICES"
        )
    start = time.monotonic()
    last_report = start
    while True:
        lease = try_acquire(n_gpus, devices, lock_dir)
        if lease is not None:
            return lease
        now = time.monotonic()
        busy = ", ".join(f"{d} ({_holder(lock_dir, d)})" for d in devices)
        if timeout_s is not None and now - start >= timeout_s:
            raise OoflineError(
                f"no {n_gpus} free GPU(s) after waiting {timeout_s:g} s: devices {busy} are locked "
                f"in {lock_dir}; run fewer GPU jobs at once (snakemake --resources gpu=N) "
                "or raise --timeout"
            )
        if now - last_report >= progress_every_s:
            print(f"gpu_devices: waiting for {n_gpus} free GPU(s); busy: {busy}", file=sys.stderr, flush=True)
            last_report = now
        time.sleep(poll_s)


def launch_prefix(n_processes: int, python: str | None = None) -> list[str]:
    """The command that starts a Python module on `n_processes` GPUs: python, or torchrun for > 1.

    Append `-m module args...`; torchrun's --standalone picks a free rendezvous port, so two
    multi-GPU jobs on one machine do not collide.
    """
    python = python or sys.executable
    if n_processes <= 1:
        return [python]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_processes}"]


def with_launcher(command: Sequence[str], n_processes: int) -> list[str]:
    """Replace the leading `python` of `python -m module ...` by launch_prefix(n_processes)."""
    if len(command) < 3 or command[1] != "-m" or not Path(command[0]).name.startswith("python"):
        raise OoflineError(
            f"--torchrun needs a command of the form `python -m module args...`, got {' '.join(command)!r}"
        )
    return launch_prefix(n_processes, python=command[0]) + list(command[1:])


def plan_environment(
    n_gpus: int,
    env: Mapping[str, str],
    lock_dir: Path,
    timeout_s: float | None,
    when_no_gpu: str = "cpu",
) -> tuple[dict[str, str], GpuLease | None]:
    """The environment for the wrapped command and the lease it must hold (None: nothing to hold)."""
    new_env = dict(env)
    if managed_by_scheduler(env):
        return new_env, None  # Slurm (or an outer wrapper) already set CUDA_VISIBLE_DEVICES
    if n_gpus == 0:
        new_env["CUDA_VISIBLE_DEVICES"] = ""
        return new_env, None
    devices = discover_devices(env)
    if not devices:
        if when_no_gpu == "error":
            raise OoflineError(
                f"job asks for {n_gpus} GPU(s) but none were found: nvidia-smi is not on PATH and "
                f"{DEVICES_ENV} is unset"
            )
        print("gpu_devices: no GPU found; running on the CPU", file=sys.stderr, flush=True)
        new_env["CUDA_VISIBLE_DEVICES"] = ""
        return new_env, None
    lease = acquire(n_gpus, devices, lock_dir, timeout_s=timeout_s)
    new_env["CUDA_VISIBLE_DEVICES"] = lease.cuda_visible_devices
    new_env[ALLOCATED_ENV] = "1"
    return new_env, lease


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise OoflineError("gpu_devices: put the command after `--`, e.g. `--gpus 1 -- python -m ...`")
    split = argv.index("--")
    own, command = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(
        prog="python -m workflow_scripts.execution.gpu_devices",
        description="Lock free GPUs, set CUDA_VISIBLE_DEVICES and exec the command holding the locks.",
    )
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs the job needs (0: none)")
    parser.add_argument("--lock-dir", type=Path, default=None, help="shared lock directory")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for free GPUs (default: forever)")
    parser.add_argument("--torchrun", action="store_true", help="with >1 GPU, launch `python -m ...` via torchrun")
    parser.add_argument("--when-no-gpu", choices=["cpu", "error"], default="cpu",
                        help="no GPU on this machine: run on the CPU (default) or fail")
    args = parser.parse_args(own)
    if not command:
        raise OoflineError("gpu_devices: no command after `--`")
    if args.gpus < 0:
        raise OoflineError(f"--gpus must be >= 0, got {args.gpus}")
    return args, command


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_args(argv)
    lock_dir = args.lock_dir or default_lock_dir()
    env, lease = plan_environment(args.gpus, os.environ, lock_dir, args.timeout, args.when_no_gpu)
    if args.torchrun:
        # one process per requested GPU; a Slurm job that asked through --gres has --gpus 0 here, and
        # Slurm's CUDA_VISIBLE_DEVICES lists exactly the GPUs it was given
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        command = with_launcher(command, max(1, args.gpus or len(visible)))
    print(
        f"gpu_devices: CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')} "
        f"for {' '.join(command)}", file=sys.stderr, flush=True,
    )
    if lease is not None:
        lease.make_inheritable()
    try:
        os.execvpe(command[0], command, env)
    except OSError as error:
        raise OoflineError(f"gpu_devices: cannot run {command[0]!r}: {error}") from error


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
