"""A thread parked in one network namespace, running calls for it.

Python 3.11 has no os.setns; libc's setns(2) and unshare(2) move only the calling thread,
so one long-lived thread per namespace makes each call cost tens of microseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(OSError):
    """A namespace could not be created, entered or removed."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"{what}: {os.strerror(err)}")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def _ensure_run_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so bind mounts propagate."""
    os.makedirs(NETNS_RUN_DIR, exist_ok=True)
    target = NETNS_RUN_DIR.encode()
    if _libc.mount(b"none", target, None, MS_SHARED | MS_REC, None) == 0:
        return
    _check(_libc.mount(target, target, b"none", MS_BIND | MS_REC, None), f"bind-mount {NETNS_RUN_DIR}")
    _check(_libc.mount(b"none", target, None, MS_SHARED | MS_REC, None), f"share {NETNS_RUN_DIR}")


def remove_netns(name: str) -> bool:
    """Unmount and unlink /run/netns/NAME. Returns False if it was already gone."""
    path = netns_path(name)
    if not os.path.exists(path):
        return False
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise NamespaceError(err, f"unmount {path}: {os.strerror(err)}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


SETTLE_TIMEOUT = 30.0  # how long an interrupted caller waits for creations under way to end


def settle(futures: list[Future[Any]], timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait (bounded) until ``futures`` are done, through further interrupts: work started in
    other threads ends before the caller's cleanup looks at what exists."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        try:
            wait(futures, timeout=left)
            return
        except BaseException:  # noqa: BLE001 - a second Ctrl-C must not cut the wait short; the first is re-raised by the caller
            continue


class NamespaceWorker:
    """Runs callables in a thread that lives in one network namespace.

    ``create=True`` makes a new namespace bound at /run/netns/NAME (failing if it exists);
    otherwise the thread enters ``path`` (never creating it), or stays in the process's own
    namespace when ``path`` is None.
    """

    def __init__(self, label: str, path: str | None, *, create: bool = False) -> None:
        self.label = label
        self.path = path
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = queue.SimpleQueue()
        self._ready: Future[None] = Future()
        self.state: dict[str, Any] = {}  # per-thread resources, e.g. an IPRoute socket
        self._closers: list[Callable[[], None]] = []
        self._thread = threading.Thread(target=self._main, args=(create,), name=f"netns:{label}", daemon=True)
        try:
            # start() inside the try: a Ctrl-C landing just after the thread starts is handled too.
            self._thread.start()
            self._ready.result()
        except BaseException:
            # Failed, or interrupted (Ctrl-C, SIGTERM) while entering: never leave the thread parked in
            # the namespace, where it would keep it (and its links) alive after its removal. And let a
            # creation under way end first, so that the caller's teardown finds the namespace it made.
            self._jobs.put(None)
            settle([self._ready])
            raise

    def _enter(self, create: bool) -> None:
        if self.path is None:
            return
        if create:
            _ensure_run_dir()
            try:
                os.close(os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
            except FileExistsError:
                raise NamespaceError(errno.EEXIST, f"namespace {self.path} already exists (a leftover? try: netcheck clean)") from None
            try:
                _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
                _check(_libc.mount(b"/proc/thread-self/ns/net", self.path.encode(), b"none", MS_BIND, None), f"bind-mount {self.path}")
            except BaseException:
                os.unlink(self.path)
                raise
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise NamespaceError(errno.ENOENT, f"no namespace at {self.path}") from None
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns({self.path})")
        finally:
            os.close(fd)

    def _main(self, create: bool) -> None:
        try:
            self._enter(create)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        while True:
            job = self._jobs.get()
            if job is None:
                break
            fn, args, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(exc)
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):  # best effort: the thread is ending
                close()
        self._closers.clear()
        self.state.clear()

    def on_close(self, close: Callable[[], None]) -> None:
        """Register a cleanup to run inside the thread when the worker closes."""
        self._closers.append(close)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        fut: Future[T] = Future()
        if not self._thread.is_alive():
            raise NamespaceError(errno.ESRCH, f"the worker for {self.label} has stopped")
        self._jobs.put((fn, args, fut))
        return fut

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 60.0) -> T:
        """Run ``fn(*args)`` in the namespace and return its result (or raise its error)."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit(fn, *args).result(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread after it has closed what it holds in the namespace."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise NamespaceError(errno.EBUSY, f"the worker for {self.label} did not stop within {timeout}s")
