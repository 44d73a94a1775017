"""Running generated code without trusting it: a separate process with limits, no network, a throwaway directory.

A reward that executes what a model wrote (``dsnb.train.rewards.function_runs``) must assume the code can
loop forever, allocate all the memory there is, write anywhere the user can, open sockets, start
processes or kill its parent. ``run_sandboxed(code)`` runs it in a fresh interpreter and returns a
``SandboxResult`` (``status`` one of ``STATUSES``, exit code, the first characters of its output,
seconds); the caller's process is never touched. The layers, each tested in ``tests/test_reward_sandbox.py``:

1. **A separate process** (``python -I -S``: no site-packages, no user site, no ``PYTHON*`` variables),
   in its own session so that a timeout kills the whole process group, with an empty environment and
   a fresh temporary directory as its working directory and ``HOME``, deleted afterwards.
2. **Resource limits**, set by the guest's first lines before any generated code runs (``setrlimit``,
   hard limit = soft limit, so the code cannot raise them; ``preexec_fn`` is avoided because it is not
   safe in a process with threads, and PyTorch's are running): address space (``memory_mb``), CPU
   seconds, size of any file written (``file_mb``), open files, no core dumps. A wall-clock timeout
   (``seconds``) kills the process group even when it sleeps instead of computing.
3. **An audit hook** (PEP 578, installed before the code is compiled; a hook cannot be removed from
   Python code, and its state lives in a closure the guest cannot reach: ``gc``'s object walks are
   refused) that refuses: opening a file for writing outside the directory (paths resolved through
   symbolic links and ``..``), reading or listing files outside the directory and the standard library,
   every socket operation and name lookup, starting or replacing processes (``subprocess``,
   ``os.system``, ``os.exec*``, ``os.fork``, ``posix_spawn``), signalling other processes, changing files
   outside the directory (remove, rename, chmod, links...), changing directory, ``setrlimit``, and
   importing the modules that reach around it (``ctypes``, ``_posixsubprocess``, ``socket``, ``_socket``,
   ``multiprocessing``...). A refusal raises ``PermissionError`` in the guest and is reported on stderr
   (``SandboxResult.refused``) even if the code catches it.
4. **No network namespace** where the kernel allows one: with ``unshare -rn`` available (Linux, user
   namespaces on), the guest runs in a network namespace with no interface but a down loopback, so no
   connection can succeed even around the hook. ``sandbox_layers()`` says which layers this machine has.

Not a security boundary against a determined attacker with kernel exploits (use a container or a VM
for that, e.g. gVisor or Firecracker, as large RL runs do); a boundary against what a language model
writes by accident or by reward hacking. Taught in notebook 12.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

#: Every ``SandboxResult.status``: ran to the end (exit 0), raised (non-zero exit), ran out of time (wall or
#: CPU), ran out of memory, was refused an operation by the audit hook, or was killed by a signal.
STATUSES = ("ok", "error", "timeout", "memory", "refused", "killed")


@dataclass(frozen=True)
class SandboxLimits:
    """What one sandboxed run may use: wall seconds, CPU seconds, address space and file size (MiB)."""

    seconds: float = 2.0
    cpu_seconds: int = 2
    memory_mb: int = 256
    file_mb: int = 1
    open_files: int = 64
    output_chars: int = 4000

    def __post_init__(self) -> None:
        if not (self.seconds > 0 and self.cpu_seconds >= 1 and self.memory_mb >= 32 and self.file_mb >= 0
                and self.open_files >= 16 and self.output_chars >= 0):
            raise ValueError(f"sandbox limits out of range: {self} (seconds > 0, cpu_seconds >= 1, memory_mb >= 32, "
                             "file_mb >= 0, open_files >= 16: the interpreter needs some of each to start)")


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended (``status``), its exit code, the start of its output, and its wall time."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    refused: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when the code ran to the end and exited with status 0."""
        return self.status == "ok"


# The guest's bootstrap: limits first, then the audit hook, then the generated code read from stdin. It runs with
# -I -S, so it sees the standard library only. Kept in one string passed with -c: no file of ours the code could edit.
_GUEST = r'''
import os, sys

def _install(argv):
    import resource
    mem, cpu, fsize, nofile = (int(x) for x in argv[1:5])
    for what, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
                        (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(what, (value, value))
    realpath, fsdecode, sep, write_fd = os.path.realpath, os.fsdecode, os.sep, os.write
    root = realpath(os.getcwd())
    readable = tuple({realpath(p) for p in sys.path if p} | {root, realpath(sys.prefix), realpath(sys.base_prefix)})
    writing_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    deny = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "os.kill", "os.killpg", "os.chdir", "os.fchdir", "os.chroot", "os.setuid", "os.setgid", "ctypes.",
            "resource.setrlimit", "resource.prlimit", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
            "sys._current_frames", "sys.remote_exec", "pty.", "mmap.",
            "_winapi.", "msvcrt.", "winreg.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.",
            "poplib.", "nntplib.", "telnetlib.")
    blocked_imports = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_socket", "socket", "ssl", "_ssl",
                                 "multiprocessing", "_multiprocessing", "_posixshmem", "resource", "pty", "fcntl"})
    changes = ("os.remove", "os.unlink", "os.rename", "os.replace", "os.rmdir", "os.mkdir", "os.makedirs", "os.symlink",
               "os.link", "os.chmod", "os.chown", "os.chflags", "os.truncate", "os.utime", "os.setxattr",
               "os.removexattr", "shutil.")
    listings = ("os.listdir", "os.scandir")

    def inside(path, roots):
        try:
            real = realpath(fsdecode(path))
        except (TypeError, ValueError):
            return False
        return any(real == r or real.startswith(r.rstrip(sep) + sep) for r in roots)

    def refuse(event, detail):
        write_fd(2, ("dsnb-sandbox: refused " + event + " " + repr(detail)[:200] + "\n").encode("utf-8", "replace"))
        raise PermissionError("sandbox: " + event + " is not allowed here")

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(path, int) or path is None:
                return
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and bool(flags & writing_flags))
            if not inside(path, (root,) if writing else readable):
                refuse(event, (path, mode))
        elif event == "import":
            if args and str(args[0]).split(".")[0] in blocked_imports:
                refuse(event, args[0])
        elif event.startswith(deny):
            refuse(event, args[:2])
        elif event.startswith(changes) or event.startswith(listings):
            roots = readable if event.startswith(listings) else (root,)
            for a in args:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a, roots):
                    refuse(event, a)

    sys.dont_write_bytecode = True
    sys.addaudithook(hook)


_install(sys.argv)
del _install
exec(compile(sys.stdin.buffer.read().decode("utf-8", "surrogatepass"), "<generated>", "exec"),
     {"__name__": "__main__", "__builtins__": __builtins__})
'''


@functools.cache
def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` can start a process with no network here (asked once per process)."""
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return False
    try:
        return subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def sandbox_layers() -> dict[str, bool]:
    """The isolation layers this machine gives a sandboxed run (the network namespace needs Linux user namespaces)."""
    import resource  # noqa: F401  (POSIX only: the limits need it)

    return {"separate process": True, "resource limits": True, "throwaway directory": True,
            "audit hook": True, "network namespace": network_namespace_available()}


def _read_start(path: str, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(chars * 4).decode("utf-8", "replace")[:chars]
    except OSError:
        return ""


def run_sandboxed(code: str, limits: SandboxLimits | None = None, *, network_namespace: bool | None = None
                  ) -> SandboxResult:
    """Run ``code`` (Python source, any string) in a sandboxed interpreter; see the module doc for the layers.

    ``network_namespace``: None uses ``unshare -rn`` where it works, False never (the audit hook still refuses
    every socket operation). Output goes to files in the throwaway directory (their size is limited, a pipe's is
    not); the first ``limits.output_chars`` characters of each come back.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, not {type(code).__name__}")
    limits = limits or SandboxLimits()
    use_netns = network_namespace_available() if network_namespace is None else network_namespace
    mib = 2**20
    cmd = [sys.executable, "-I", "-S", "-B", "-c", _GUEST, str(limits.memory_mb * mib), str(limits.cpu_seconds),
           str(limits.file_mb * mib), str(limits.open_files)]
    if use_netns:
        cmd = [shutil.which("unshare") or "unshare", "-rn", *cmd]
    workdir = tempfile.mkdtemp(prefix="dsnb-sandbox-")
    out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    t0 = time.perf_counter()
    timed_out = False
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
                                    start_new_session=True, close_fds=True)
            try:
                proc.communicate(code.encode("utf-8", "surrogatepass"), timeout=limits.seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                proc.wait()
            except BaseException:
                _kill_group(proc)
                proc.wait()
                raise
        seconds = time.perf_counter() - t0
        stdout = _read_start(out_path, limits.output_chars)
        stderr_full = _read_start(err_path, max(limits.output_chars, 20_000))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    refused = tuple(line.removeprefix("dsnb-sandbox: refused ") for line in stderr_full.splitlines()
                    if line.startswith("dsnb-sandbox: refused "))
    code_ = proc.returncode
    if timed_out or code_ in (-signal.SIGXCPU, -signal.SIGKILL) and not refused:
        status = "timeout"
    elif code_ == 0:
        status = "ok"
    elif "MemoryError" in stderr_full or code_ == -signal.SIGSEGV and "memory" in stderr_full.lower():
        status = "memory"
    elif refused:
        status = "refused"
    elif code_ is not None and code_ < 0:
        status = "killed"
    else:
        status = "error"
    return SandboxResult(status, code_, stdout, stderr_full[:limits.output_chars], seconds, refused)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandboxed process's whole group (it is a session leader: its group id is its pid)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass
