"""Child processes: fresh Python interpreters, each running one function of compass, talked to through a pipe.

The fuzzer's worker, the benchmark's measurements and the training report's parallel coding all run this way:
a child starts from a clean interpreter with the thread settings of its environment (OpenMP and MKL read theirs
before any code runs), reports its own memory, and a crash, a hang or an exception in it ends in an exception
the caller handles, never in the caller. A child's messages travel pickled over its stdin and stdout; what it
prints goes to its stderr.

    child = Child("compass.bench.jobs:child", env={"OMP_NUM_THREADS": "1"})
    result = child.ask(spec, timeout=10)   # Hung after 10 CPU s, Died if it ends or raises first
    child.close()
"""
from __future__ import annotations

import importlib
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from .errors import CompassError

WALL_FACTOR = 30  # a child that blocks instead of spinning hangs after this many times its CPU budget, in wall time
_END = object()  # the child's channel closed


class Died(CompassError):
    """The child ended without answering: `code` is its exit code, `error` the traceback it sent if it raised."""

    def __init__(self, code: int | None, error: str = ""):
        super().__init__(error.strip().splitlines()[-1] if error.strip() else f"child exited with code {code}")
        self.code, self.error = code, error


class Hung(CompassError):
    """The child spent its CPU budget (or `WALL_FACTOR` times it in wall time) without answering; it was killed."""

    def __init__(self, cpu: float, wall: float):
        super().__init__(f"no answer after {cpu:.1f} CPU s ({wall:.0f} s)")
        self.cpu, self.wall = cpu, wall


class Channel:
    """The child's end: `recv` the next message (None when the parent closed it), `send` an answer."""

    def __init__(self, incoming: BinaryIO, outgoing: BinaryIO):
        self._in, self._out = incoming, outgoing

    def recv(self):
        try:
            return pickle.load(self._in)
        except EOFError:
            return None

    def send(self, message, ok: bool = True) -> None:
        pickle.dump((ok, message), self._out)
        self._out.flush()


class Child:
    """A fresh interpreter running `target(channel, *args)`, `target` named "module:function" (so nothing is
    imported before `env`, added to this process's environment, is in force). `stderr`: as subprocess takes it."""

    def __init__(self, target: str, *args, env: dict | None = None, stderr=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "compass.procs"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, env={**os.environ, **(env or {})})
        self._answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send((target, args))

    def _read(self) -> None:
        while True:
            try:
                self._answers.put(pickle.load(self.proc.stdout))
            except Exception:  # EOF, or the pipe broken by a kill
                self._answers.put(_END)
                return

    def send(self, message) -> None:
        """Send `message`; Died when the child is gone."""
        try:
            pickle.dump(message, self.proc.stdin)
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            raise Died(self.proc.returncode) from None

    def receive(self, timeout: float | None = None):
        """The child's next message. `timeout`: CPU seconds it may spend first (see `Hung`); None waits."""
        cpu0, wall0 = cpu_seconds(self.proc.pid), time.monotonic()
        while True:
            try:
                message = self._answers.get(timeout=0.1)
            except queue.Empty:
                cpu, wall = cpu_seconds(self.proc.pid) - cpu0, time.monotonic() - wall0
                if timeout is not None and (cpu > timeout or wall > WALL_FACTOR * timeout):
                    self.kill()
                    raise Hung(cpu, wall) from None
                continue
            if message is _END:
                self.proc.wait()
                raise Died(self.proc.returncode)
            ok, value = message
            if not ok:
                self.proc.wait()
                raise Died(self.proc.returncode, value)
            return value

    def ask(self, message, timeout: float | None = None):
        """`send` then `receive`."""
        self.send(message)
        return self.receive(timeout)

    def close(self, grace: float = 2.0) -> None:
        """Tell the child to end (None as its next message); kill it after `grace` seconds."""
        if self.proc.poll() is None:
            try:
                pickle.dump(None, self.proc.stdin)
                self.proc.stdin.close()
                self.proc.wait(grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def serve(channel: Channel, handle: Callable) -> None:
    """A child's loop: answer each message with `handle(message)` until the parent sends None."""
    while (message := channel.recv()) is not None:
        channel.send(handle(message))


def map_in_children(target: str, args: tuple, items: Iterable, jobs: int, done: Callable[[], object] | None = None,
                    env: dict | None = None) -> list:
    """The answers to `items`, in order, from `jobs` children running `target(channel, *args)` (which `serve`
    them), each taking the next item when it is free; `done()` after each answer."""
    work = list(enumerate(items))
    results: list = [None] * len(work)
    lock = threading.Lock()

    def drive() -> None:
        child = Child(target, *args, env=env)
        try:
            while True:
                with lock:
                    if not work:
                        return
                    i, item = work.pop(0)
                results[i] = child.ask(item)
                if done is not None:
                    done()
        except BaseException:
            with lock:
                work.clear()  # the other children stop after their current item
            raise
        finally:
            child.close()

    with ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(drive) for _ in range(jobs)]:
            future.result()
    return results


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used: from /proc on Linux, 0 elsewhere (wall time rules)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _main() -> None:
    """A child: the parent's first message names the target and its arguments."""
    channel = Channel(sys.stdin.buffer, os.fdopen(os.dup(1), "wb"))
    os.dup2(2, 1)  # what the target prints goes to stderr, not into the channel
    target, args = channel.recv()
    module, name = target.split(":")
    try:
        getattr(importlib.import_module(module), name)(channel, *args)
    except BaseException:
        channel.send(traceback.format_exc(), ok=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    _main()
