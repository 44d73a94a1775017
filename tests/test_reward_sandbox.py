"""The sandbox for generated code (dsnb.train.sandbox): an infinite loop, a huge allocation, a write outside its
directory, a network attempt, a process start and a kill are contained, each layer on its own where it can be;
the caller's process and files are untouched."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dsnb.train.sandbox import (
    STATUSES,
    SandboxLimits,
    network_namespace_available,
    run_sandboxed,
    sandbox_layers,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox's limits are POSIX, tested on Linux")


def test_plain_code_runs_and_its_output_comes_back():
    r = run_sandboxed("import json, collections, re, itertools\nprint(json.dumps({'a': [1, 2]}))")
    assert r.status == "ok" and r.ok and r.returncode == 0 and r.stdout == '{"a": [1, 2]}\n' and not r.refused
    assert set(sandbox_layers()) >= {"separate process", "resource limits", "audit hook", "network namespace"}


def test_an_infinite_loop_is_stopped_at_the_time_limit():
    limits = SandboxLimits(seconds=1.0, cpu_seconds=5)
    t0 = time.perf_counter()
    r = run_sandboxed("while True:\n    pass", limits)
    assert r.status == "timeout" and time.perf_counter() - t0 < 5
    r = run_sandboxed("import time\ntime.sleep(60)", limits)  # sleeping uses no CPU: the wall clock stops it
    assert r.status == "timeout" and r.seconds < 5


def test_the_cpu_limit_stops_a_loop_on_its_own():
    r = run_sandboxed("while True:\n    pass", SandboxLimits(seconds=30, cpu_seconds=1))
    assert r.status == "timeout" and r.seconds < 15  # killed by SIGXCPU long before the 30 s wall clock


@pytest.mark.parametrize("code", ["x = bytearray(10**10)", "x = [0] * 10**9", "x = 'a' * (2**33)"])
def test_a_huge_allocation_fails_in_the_guest_only(code):
    r = run_sandboxed(code, SandboxLimits(memory_mb=128))
    assert r.status == "memory" and "MemoryError" in r.stderr
    assert bytearray(10**6)  # the caller can still allocate


@pytest.mark.parametrize("code", [
    "open({outside!r}, 'w').write('x')",
    "import os\nfd = os.open({outside!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
    "import pathlib\npathlib.Path({outside!r}).write_text('x')",
    "open('../' + {name!r}, 'w').write('x')",
    "import os\nos.symlink({parent!r}, 'up')\nopen('up/' + {name!r}, 'w').write('x')",
    "import os\nos.system('touch ' + {outside!r})",
    "import shutil\nshutil.copyfile('/etc/hostname', {outside!r})",
], ids=["open", "os.open", "pathlib", "relative ..", "symlink", "os.system", "shutil"])
def test_a_write_outside_the_directory_is_refused(code, tmp_path):
    outside = tmp_path / "escaped.txt"
    r = run_sandboxed(code.format(outside=str(outside), name=outside.name, parent=str(tmp_path)))
    assert r.status == "refused" and r.refused, r
    assert not outside.exists()


def test_the_directory_is_writable_and_thrown_away():
    r = run_sandboxed("import os\nopen('notes.txt', 'w').write('kept?')\nprint(os.getcwd())\nprint(open('notes.txt').read())")
    assert r.ok, r
    workdir, text = r.stdout.splitlines()
    assert text == "kept?" and "dsnb-sandbox-" in workdir and not Path(workdir).exists()


def test_reading_private_files_and_changing_others_is_refused(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    for code in (f"print(open({str(victim)!r}).read())", f"import os\nos.remove({str(victim)!r})",
                 f"import os\nos.chmod({str(victim)!r}, 0o777)", f"import os\nos.rename({str(victim)!r}, 'stolen')"):
        r = run_sandboxed(code)
        assert r.status == "refused" and "mine" not in r.stdout, (code, r)
    assert victim.read_text() == "mine"


def test_the_output_is_bounded_by_the_file_size_limit():
    r = run_sandboxed("while True:\n    print('x' * 1000)", SandboxLimits(seconds=5, file_mb=1, output_chars=100))
    assert r.status in ("error", "killed") and len(r.stdout) == 100  # stopped by RLIMIT_FSIZE, not the clock
    assert r.seconds < 5


class _Listener:
    """A TCP server on localhost that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
                self.accepted += 1
                conn.close()
            except OSError:
                continue

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("netns", [False, None], ids=["audit hook alone", "every layer"])
def test_a_network_attempt_is_contained(netns):
    server = _Listener()
    try:
        # the listener is reachable from this process, so a failure in the guest is the sandbox's doing
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
        time.sleep(0.3)
        before = server.accepted
        assert before == 1
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {server.port}), timeout=2)",
                     f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {server.port}))",
                     "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)"):
            r = run_sandboxed(code, network_namespace=netns)
            assert r.status == "refused" and not r.ok, (code, r)
        time.sleep(0.3)
        assert server.accepted == before
    finally:
        server.close()


@pytest.mark.skipif(not network_namespace_available(), reason="no user namespaces here (unshare -rn fails)")
def test_the_network_namespace_blocks_connections_without_the_hook():
    """The OS layer on its own: a plain interpreter under `unshare -rn` cannot reach a server this process reaches."""
    server = _Listener()
    try:
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {server.port}), timeout=2)"
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
        assert plain.returncode == 0  # without the namespace it connects
        isolated = subprocess.run([shutil.which("unshare"), "-rn", sys.executable, "-c", code], capture_output=True,
                                  timeout=30)
        assert isolated.returncode != 0 and b"Network is unreachable" in isolated.stderr
    finally:
        server.close()


@pytest.mark.parametrize("code", [
    "import os\nos.fork()", "import subprocess\nsubprocess.run(['true'])", "import os\nos.execv('/bin/true', ['true'])",
    "import os\nos.kill(os.getppid(), 9)", "import ctypes", "import os\nos.chdir('/')",
    "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))", "import gc\ngc.get_objects()",
], ids=["fork", "subprocess", "exec", "kill parent", "ctypes", "chdir", "setrlimit", "gc"])
def test_escapes_from_the_process_are_refused(code):
    r = run_sandboxed(code)
    assert r.status == "refused", r
    assert os.getpid()  # this process is alive (the kill of the guest's parent targets the sandbox's launcher at most)


def test_a_refusal_caught_by_the_code_is_still_reported(tmp_path):
    outside = tmp_path / "x.txt"
    r = run_sandboxed(f"try:\n    open({str(outside)!r}, 'w')\nexcept PermissionError:\n    print('caught')")
    assert r.status == "ok" and r.stdout == "caught\n" and r.refused and not outside.exists()


@pytest.mark.parametrize("code, statuses", [
    ("def (", {"error"}), ("raise SystemExit(3)", {"error"}), ("x = '\ud800'", {"error"}), ("x = 1\x00", {"error"}),
    ("", {"ok"}), ("import sys\nsys.setrecursionlimit(10**6)\ndef f(): f()\nf()", set(STATUSES) - {"ok", "refused"}),
], ids=["syntax", "exit code", "lone surrogate", "NUL byte", "empty", "stack overflow"])
def test_hostile_sources_end_with_a_status_not_an_exception(code, statuses):
    r = run_sandboxed(code, SandboxLimits(seconds=5))
    assert r.status in statuses, r


def test_limits_are_checked():
    with pytest.raises(ValueError, match="out of range"):
        SandboxLimits(memory_mb=1)
    with pytest.raises(TypeError):
        run_sandboxed(b"print(1)")  # type: ignore[arg-type]
