"""The "cli" cases run: `compass` as a subprocess in a fresh folder, judged by its exit code, its output and the
files it leaves."""
from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .. import bitstream, limits
from ..errors import CompassError
from ..fileutil import TEMPORARY
from ..procs import WALL_FACTOR, cpu_seconds
from .format import Case

_NOTE = re.compile(r"compass \w+: (warning: |decoding layer )")  # stderr lines that are not the error


def run_command(case: Case, workdir: str, weights: str, timeout: float, memory_mb: int) -> dict:
    """Run `compass` as a subprocess on `case.cli` in a fresh folder and judge it; never raises.

    It fails when it hangs (`timeout` * 3 CPU seconds, or 30 times that in wall time) or its peak RSS passes
    `memory_mb`; when the exit code is not one of those expected; when stderr holds anything but compass's own
    lines (a traceback), or not exactly one error line on exit 2 or 130 (none otherwise); when it leaves a
    temporary file; when a failed command changed any file; or when a check of spec["checks"] fails: ("lines",
    n) `info` printed n layers; ("stderr", text) in its error; ("equals", name, bytes or None) the file holds
    that or does not exist; ("absent" | "exists", name); ("mode", name, bits); ("special", name) the node or FIFO
    is still one; ("compass", name) a readable compass file.
    """
    spec = case.cli
    with tempfile.TemporaryDirectory(dir=workdir) as d, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        folder = Path(d)
        src = folder / spec.get("name", "in.cmp")
        how = spec.get("input", "file")
        if how == "file":
            src.write_bytes(case.data)
        elif how == "fifo":
            os.mkfifo(src)
        elif how.startswith("link:"):
            src.symlink_to(how[5:])
        elif how == "sparse":
            with open(src, "wb") as f:
                f.truncate(8 << 30)
        for name, data in spec.get("files", {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        _setup(folder, spec.get("setup", ()))
        before = snapshot(folder)
        argv = [a.format_map({"in": src.name, "w": str(weights)}) for a in spec["argv"]]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.Popen([sys.executable, "-m", "compass", *argv], cwd=folder, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if spec.get("closed") else out,
                                stderr=err)
        _limit_memory(proc.pid, (memory_mb + 2048) << 20)  # address space: torch reserves more than it touches
        if spec.get("closed"):
            proc.stdout.close()
        if how == "fifo":
            threading.Thread(target=_feed, args=(src, case.data, proc), daemon=True).start()
        code, seconds, rss = _wait(proc, 3 * timeout, spec.get("sigint"))
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        problems = judge_command(spec, folder, before, code, stdout, stderr)
    outcome = "hang" if code is None else "memory" if rss > memory_mb else f"exit {code}"
    last = stderr.strip().splitlines()[-1:] or [""]
    return {"outcome": outcome, "message": " ".join(last[0].split())[:300], "layers": 0, "seconds": seconds,
            "rss_growth_mb": rss, "peak_mb": 0.0, "problems": problems}


def _setup(folder: Path, steps) -> None:
    """The special files a "cli" case needs: a device node (a copy of /dev/null; a FIFO where we may not make
    one), a FIFO, a file of mode 600, an old and a fresh temporary file of `atomic_write`'s."""
    for step, name in steps:
        path = folder / name
        if step == "node":
            try:
                os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            except PermissionError:
                os.mkfifo(path)
        elif step == "fifo":
            os.mkfifo(path)
        elif step == "mode600":
            os.chmod(path, 0o600)
        elif step == "stale":
            path.write_bytes(b"left by a killed writer")
            os.utime(path, (time.time() - 2 * limits.STALE_TEMP_SECONDS,) * 2)
            (folder / ".compass-111111111111.tmp").write_bytes(b"being written")


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (links and special files too, not followed; not folders) with its kind and inode,
    and for regular files its size and modification time: any write or replacement shows (a FIFO's times move
    as it is read)."""
    return {p.relative_to(folder): (st.st_mode, st.st_ino) + ((st.st_size, st.st_mtime_ns) if stat.S_ISREG(
        st.st_mode) else ()) for p in folder.rglob("*") if not stat.S_ISDIR((st := p.lstat()).st_mode)}


def _limit_memory(pid: int, limit: int) -> None:
    """Set process `pid`'s address-space limit (a guard for the machine: the verdict is on its peak RSS)."""
    import resource

    with contextlib.suppress(OSError):  # it has ended already
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


def _feed(fifo: Path, data: bytes, proc) -> None:
    """Write `data` into `fifo` once `proc` opens it for reading (it may exit first: then nothing is written).
    `_wait` alone reaps `proc` (and sets its return code): a poll here could take its exit status away."""
    while proc.returncode is None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader yet
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        try:
            with open(fd, "wb") as f:
                f.write(data)
        except OSError:
            pass  # the reader stopped reading
        return


def _wait(proc, cpu_limit: float, interrupt: float | None) -> tuple[int | None, float, float]:
    """(exit code, CPU seconds, peak RSS in MiB) of `proc`; exit code None when it ran past `cpu_limit` CPU
    seconds (or 30 times that in wall time) and was killed. `interrupt`: send SIGINT that many seconds after the
    process mapped torch (it is then inside `compass.cli.main`).

    Exit codes are what a shell reports: 128 + N for a death by signal N. Python ends by SIGINT even after
    `main` handled the KeyboardInterrupt (exit 130) when the interrupt came while C code ran Python code (say,
    inside torch's import): either way a shell sees 130.
    """
    import signal

    wall0, loaded = time.monotonic(), None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
            return code, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        if interrupt is not None:
            if loaded is None and "libtorch" in _read_text(f"/proc/{proc.pid}/maps"):
                loaded = time.monotonic()
            if loaded is not None and time.monotonic() - loaded >= interrupt:
                proc.send_signal(signal.SIGINT)
                interrupt = None
        if cpu_seconds(proc.pid) > cpu_limit or time.monotonic() - wall0 > WALL_FACTOR * cpu_limit:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return None, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        time.sleep(0.01)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def judge_command(spec: dict, folder: Path, before: dict, code: int | None, stdout: str, stderr: str) -> list[str]:
    problems = []
    if code is not None and code not in spec["expect"]:
        problems.append(f"exit code {code}, expected {' or '.join(map(str, spec['expect']))}")
    lines = stderr.splitlines()
    errors = [line for line in lines if not _NOTE.match(line)]
    if "Traceback" in stderr or not all(line.startswith("compass") for line in lines):
        problems.append(f"stderr is not compass's one-line messages: {stderr[-300:]!r}")
    elif len(errors) != (code in (2, 130)):
        problems.append(f"{len(errors)} error lines on exit {code}")
    after = snapshot(folder)
    new = [p for p in after if p not in before and TEMPORARY.fullmatch(p.name)]
    if new:
        problems.append(f"temporary file left: {new[0]}")
    may_change = {Path(c[1]) for c in spec.get("checks", ()) if c[0] == "absent"}
    may_change |= set(map(Path, spec.get("writes", ())))
    if code != 0 and {p: v for p, v in after.items() if p not in may_change} != {
            p: v for p, v in before.items() if p not in may_change}:
        problems.append("a failed command changed files")
    for check, name, *arg in spec.get("checks", ()):
        problem = _check(check, folder, name, arg, stdout, stderr)
        if problem:
            problems.append(problem)
    return problems


def _check(check: str, folder: Path, name, arg: list, stdout: str, stderr: str) -> str | None:
    """What is wrong with the outcome of a "cli" case by one of its checks (see `run_command`), or None."""
    path = folder / name if isinstance(name, str) else folder
    if check == "lines":
        found = sum(line.startswith("  layer ") for line in stdout.splitlines())
        return None if found == name else f"info printed {found} layers, not {name}"
    if check == "stderr":
        return None if name in stderr else f"stderr lacks {name!r}"
    if check == "equals":
        got = path.read_bytes() if path.is_file() else None
        return None if got == arg[0] else f"{name} is not what the API writes"
    if check in ("absent", "exists"):
        there = os.path.lexists(path)
        return None if there == (check == "exists") else f"{name} is {'' if there else 'not '}there"
    if check == "mode":
        return None if stat.S_IMODE(path.stat().st_mode) == arg[0] else f"{name} has mode {path.stat().st_mode:o}"
    if check == "special":
        return None if not stat.S_ISREG(path.lstat().st_mode) else f"{name} was replaced by a regular file"
    try:  # "compass"
        bitstream.read_header(path.read_bytes())
        return None
    except (OSError, CompassError) as e:
        return f"{name} is not a compass file ({e})"

