"""Warm start: run `python -m workflow_scripts.<step>` jobs as forks of a Python that has already imported torch,
transformers and peft (docs/performance.md, "Warm start").

A tiny job on the CPU spends ~7 s of CPU importing torch + transformers + peft and ~1 s working; a workflow of
hundreds of such jobs (the demo, the test suite) spends most of its time importing. With `OOFLINE_WARM_START=DIR`
and DIR/bin first on PATH (`shim_environment`), the `python` that a rule's shell command starts is DIR/bin/python,
a stdlib-only client: for `python -m workflow_scripts.<step> ...` (and the FlagEmbedding fine-tune a retrieval step
starts through `interpreter()`) it asks a server (one per interpreter and environment, started on first use,
gone after `IDLE_S` idle) to fork a child that runs the step with the job's argv, working directory, environment
and stdin / stdout / stderr (passed as file descriptors); anything else, or any trouble before the step starts,
execs the real interpreter: warm start never fails a step that would have run cold.

What stays the same as a cold start: the step's code is imported fresh in every child (the server imports no
workflow_scripts module, so an edited step runs as edited), the exit status (a signal death is re-raised by the
client), SIGTERM / SIGINT / SIGHUP sent to the client reach the step, and a client killed outright takes its
step with it (the server kills the step's process group when the client's connection closes). What differs:
the step is not a child of the client, so it is not in Snakemake's process group and not in a Slurm job's cgroup;
the client therefore starts cold under a scheduler (SLURM_JOB_ID set), and warm start is for local runs only.
Libraries that start threads when imported (polars) are not preloaded: forking a threaded process can deadlock.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import shlex
import signal
import socket
import struct
import sys
import time

ENV_DIR = "OOFLINE_WARM_START"
# `python -m <module>` runs warm when the module's top-level package is one of these: the workflow's steps, and the
# FlagEmbedding fine-tunes that retrieval.finetune starts as a subprocess (through `interpreter()`)
WARM_PACKAGES = ("workflow_scripts", "FlagEmbedding")
# imported once by the server, in this order; a missing one is skipped (FlagEmbedding is retrieval-only)
PRELOAD = ("numpy", "torch", "transformers", "transformers.modeling_utils", "safetensors.torch", "peft",
           "accelerate", "FlagEmbedding")
IDLE_S = 300.0
# variables that differ between jobs of one run without changing what an import does (pytest names the running
# test in PYTEST_CURRENT_TEST: keyed on it, every test of a suite would start, and wait for, a server of its own)
PER_JOB_VARIABLES = frozenset({"CUDA_VISIBLE_DEVICES", "PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST"})
# a Unix socket's path is at most 107 bytes on Linux (108 with its NUL); the server binds FOLDER/KEY.sock.PID first
SOCKET_PATH_MAX = 107
LONGEST_SOCKET_NAME = "0" * 16 + ".sock.4194304"  # a 16-hex key, the largest pid Linux hands out
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
POLL_S = 0.05


def server_key(python: str, env: dict[str, str]) -> str:
    """One server per interpreter and environment: an import reads the environment (HF_HUB_OFFLINE, HOME,
    OMP_NUM_THREADS, PYTHONPATH), so a job is only forked from a server that imported under its own."""
    items = sorted((name, value) for name, value in env.items() if name not in PER_JOB_VARIABLES)
    return hashlib.sha256(json.dumps([python, items]).encode()).hexdigest()[:16]


def folder_problem(folder: str) -> str | None:
    """Why FOLDER cannot hold the servers' sockets (too long a path), or None. Without this check a server could not
    bind and every job would start another one, importing torch in the background for nothing."""
    longest = len(os.fsencode(os.path.join(os.path.abspath(folder), LONGEST_SOCKET_NAME)))
    if longest <= SOCKET_PATH_MAX:
        return None
    return (f"warm start: the folder {folder} is too long for its servers' socket paths ({longest} > "
            f"{SOCKET_PATH_MAX} bytes): choose a shorter one, such as /tmp/oofline-warm")


def shim_environment(folder: str, python: str | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with warm start on: DIR/bin/python (written here) first on PATH."""
    problem = folder_problem(folder)
    if problem:
        raise ValueError(problem)
    env = dict(os.environ if env is None else env)
    bin_dir = os.path.join(folder, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    python = python or sys.executable
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    text = (f"#!{python} -S\n"
            "# warm start client (workflow_scripts/execution/warm_start.py): stdlib only, no site-packages\n"
            f"import sys\nsys.path.insert(0, {here!r})\n"
            "from workflow_scripts.execution.warm_start import client_main\n"
            f"client_main({python!r})\n")
    for name in ("python", "python3"):  # python3 too: a script that compares `python` with `python3` sees one
        shim = os.path.join(bin_dir, name)
        temporary = f"{shim}.{os.getpid()}"
        with open(temporary, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o755)
        os.replace(temporary, shim)
    env[ENV_DIR] = folder
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def interpreter() -> str:
    """The interpreter a step starts a Python subprocess with: the warm-start client when warm start is on (so a
    FlagEmbedding fine-tune is forked warm too), else this one."""
    folder = os.environ.get(ENV_DIR)
    shim = os.path.join(folder, "bin", "python") if folder else ""
    return shim if shim and os.access(shim, os.X_OK) else sys.executable


# --- client -------------------------------------------------------------------------------------------------------

def client_main(python: str) -> None:
    """The shim's entry: run the step warm where it can, else exec `python` with the same arguments."""
    argv = sys.argv[1:]
    folder = os.environ.get(ENV_DIR)
    if (folder and len(argv) >= 2 and argv[0] == "-m" and argv[1].partition(".")[0] in WARM_PACKAGES
            and "SLURM_JOB_ID" not in os.environ and not folder_problem(folder)):
        status = run_warm(python, folder, argv[1], argv[2:])
        if status is not None:
            exit_like(status)
    os.execv(python, [python, *argv])


def exit_like(status: int) -> None:
    """Leave as the step left: its exit code, or death by its signal."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def run_warm(python: str, folder: str, module: str, args: list[str]) -> int | None:
    """The step's wait status, or None when it did not start (no server yet: one is started for later jobs)."""
    env = dict(os.environ)
    key = server_key(python, env)
    path = os.path.join(folder, f"{key}.sock")
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(path)
        payload = json.dumps({"module": module, "args": args, "cwd": os.getcwd(), "env": env}).encode()
        socket.send_fds(connection, [struct.pack("!I", len(payload)) + payload], [0, 1, 2])
        reader = connection.makefile("r")
        first = reader.readline()
    except OSError:
        connection.close()
        start_server(python, folder, key)
        return None
    if not first.startswith("pid "):
        connection.close()
        return None  # the server went away before forking: nothing ran, start cold
    pid = int(first.split()[1])

    def forward(number, _frame):
        try:
            os.killpg(pid, number)
        except OSError:
            pass

    for number in FORWARDED_SIGNALS:
        signal.signal(number, forward)
    while True:
        try:
            line = reader.readline()
            break
        except InterruptedError:
            continue
    if not line.startswith("exit "):
        print(f"warm start: lost the server while step {module} (pid {pid}) ran", file=sys.stderr, flush=True)
        forward(signal.SIGKILL, None)
        return 1 << 8
    return int(line.split()[1])


def start_server(python: str, folder: str, key: str) -> None:
    """Start the server for `key` in the background unless one is alive (it holds KEY.lock while it runs)."""
    lock_path = os.path.join(folder, f"{key}.lock")
    try:
        descriptor = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        return  # alive (or starting): later jobs will find its socket
    fcntl.flock(descriptor, fcntl.LOCK_UN)
    os.close(descriptor)
    here = os.path.dirname(os.path.abspath(__file__))
    log = os.open(os.path.join(folder, f"{key}.log"), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    if os.fork() == 0:  # detach: the server outlives this job and is nobody's child in Snakemake's group
        os.setsid()
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if os.fork() == 0:
            # run by path, not -m: the server must not import the workflow_scripts package it will fork jobs of
            os.execv(python, [python, os.path.join(here, "warm_start.py"), "serve", folder, key])
        os._exit(0)
    os.close(log)
    os.close(null)
    os.wait()


# --- server -------------------------------------------------------------------------------------------------------

def serve(folder: str, key: str) -> None:
    lock = os.open(os.path.join(folder, f"{key}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another server for this key won the race
    started = time.time()
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as error:  # noqa: BLE001 - a preload is an optimisation; the step imports it itself
            print(f"warm start: not preloading {name}: {error}", flush=True)
    print(f"warm start: server {key} (pid {os.getpid()}) ready in {time.time() - started:.1f} s", flush=True)
    path = os.path.join(folder, f"{key}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    temporary = f"{path}.{os.getpid()}"
    listener.bind(temporary)
    listener.listen(64)
    os.replace(temporary, path)  # published only once it accepts
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    listener.settimeout(5.0)
    last = time.time()
    while os.path.exists(path) and time.time() - last < IDLE_S:
        try:
            connection, _ = listener.accept()
        except socket.timeout:
            continue
        last = time.time()
        if os.fork() == 0:
            listener.close()
            os.close(lock)  # a lock shared with a long step would keep the next server from starting
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            handle(connection)
            os._exit(0)
        connection.close()
    try:
        if os.path.exists(path) and os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
            os.unlink(path)
    except OSError:
        pass
    print(f"warm start: server {key} stopped", flush=True)


def receive_request(connection: socket.socket) -> tuple[dict, list[int]]:
    data, descriptors, _flags, _address = socket.recv_fds(connection, 1 << 16, 3)
    if len(data) < 4 or len(descriptors) != 3:
        raise OSError("warm start: a request without its header or its three file descriptors")
    size = struct.unpack("!I", data[:4])[0]
    data = data[4:]
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise OSError("warm start: a request cut short")
        data += chunk
    return json.loads(data), descriptors


def handle(connection: socket.socket) -> None:
    """One job: fork the step, tell the client its pid, wait for it (or for the client to go), report."""
    try:
        request, descriptors = receive_request(connection)
    except (OSError, ValueError):
        return
    pid = os.fork()
    if pid == 0:
        connection.close()
        run_step(request, descriptors)  # never returns
    for descriptor in descriptors:
        os.close(descriptor)
    print(f"warm start: {request['module']} as pid {pid} in {request['cwd']}", flush=True)
    try:
        connection.sendall(f"pid {pid}\n".encode())
    except OSError:
        pass
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            try:
                connection.sendall(f"exit {status}\n".encode())
            except OSError:
                pass
            return
        readable, _, _ = select.select([connection], [], [], POLL_S)
        if readable and not connection.recv(1):  # the client is gone: so is its step
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            os.waitpid(pid, 0)
            return


def run_step(request: dict, descriptors: list[int]) -> None:
    """In the forked child: become the job (fds, cwd, environment, argv) and run the step's module as __main__."""
    code = 1
    try:
        os.setpgid(0, 0)
        for target, descriptor in zip((0, 1, 2), descriptors):
            os.dup2(descriptor, target)
            os.close(descriptor)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for number in FORWARDED_SIGNALS:
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import random

        random.seed()  # as a fresh interpreter would: each job its own unseeded stream
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        for name in [name for name in sys.modules if name == "workflow_scripts" or name.startswith("workflow_scripts.")]:
            del sys.modules[name]
        sys.path.insert(0, os.getcwd())  # what `python -m` puts first; PYTHONPATH is the server's (same key)
        sys.argv = [request["module"], *request["args"]]
        import runpy

        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_request:
        if exit_request.code is None:
            code = 0
        elif isinstance(exit_request.code, int):
            code = exit_request.code
        else:
            print(exit_request.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter does: print the traceback, exit 1
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def stop_servers(folder: str) -> int:
    """Stop every server of FOLDER: each sees its socket gone and exits within seconds (a running step finishes)."""
    stopped = 0
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.endswith(".sock"):
            try:
                os.unlink(os.path.join(folder, name))
                stopped += 1
            except FileNotFoundError:
                pass
    return stopped


def shell_lines(folder: str) -> str:
    """What `eval "$(python workflow_scripts/execution/warm_start.py env FOLDER)"` runs: warm start in this shell."""
    env = shim_environment(os.path.abspath(folder))
    return "".join(f"export {name}={shlex.quote(env[name])}\n" for name in (ENV_DIR, "PATH"))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        sys.path.pop(0)  # this file's folder, which `python path/to/warm_start.py` put first
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "env":
        try:
            print(shell_lines(sys.argv[2]), end="")
        except ValueError as error:
            print(error, file=sys.stderr)
            sys.exit(2)
    elif len(sys.argv) == 3 and sys.argv[1] == "stop":
        print(f"warm start: stopped {stop_servers(sys.argv[2])} server(s)")
    else:
        print("usage: python workflow_scripts/execution/warm_start.py env FOLDER  (prints the exports that turn warm "
              "start on)\n       python workflow_scripts/execution/warm_start.py stop FOLDER  (stops its servers); "
              "see docs/performance.md", file=sys.stderr)
        sys.exit(2)
