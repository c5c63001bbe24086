"""Run the stub MemoryGate as a child process and drive its control API.

A separate process rather than a thread in the test process: the code under test gets a real
server it can time out on, lose the connection to and see killed, and the stub's event loop never
competes with the caller's for the GIL, which would skew benchmarks.

The child binds port 0 and announces the port the kernel chose, so two stubs started at once can
never race for the same "free" port. Its stderr goes to a temporary file rather than a pipe: a pipe
nobody reads fills up and blocks the server, and the file is still there to quote if it fails.

Usage::

    with StubMemoryGate.start() as stub:
        stub.set_faults(fail_next=2, retry_after=1)
        ...  # point the client at stub.url with stub.api_key
        assert stub.stats()["stored"] == 1
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

STARTUP_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
_SERVER_MODULE = "resilience.testing.stub_memorygate"
_ANNOUNCEMENT = re.compile(rb"listening on (http://\S+)")
# The directory holding the ``resilience`` package, so the child imports this same copy of it.
_IMPORT_ROOT = Path(__file__).resolve().parents[2]


class StubMemoryGateError(RuntimeError):
    """The stub did not start, or its control API refused a request."""


class StubMemoryGate:
    """A running stub MemoryGate child process; ``start()`` makes one, ``stop()`` ends it."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        url: str,
        api_key: str | None,
        stderr: IO[bytes],
    ) -> None:
        self._process = process
        self._url = url
        self._api_key = api_key
        self._stderr = stderr
        # trust_env=False: a proxy configured in the environment must not sit between us and
        # a loopback server.
        self._control = httpx.Client(base_url=url, trust_env=False, timeout=5.0)

    @classmethod
    def start(cls, api_key: str | None = "test-key", host: str = "127.0.0.1") -> StubMemoryGate:
        """Spawn a stub on a free port of ``host`` and return once it answers.

        ``api_key=None`` starts it without authentication (``$MEMORYGATE_API_KEY`` is not passed
        on either). Raises ``StubMemoryGateError``, quoting the child's stderr, if it is not
        answering within ``STARTUP_TIMEOUT_SECONDS``.
        """
        command = [sys.executable, "-m", _SERVER_MODULE, "--host", host, "--port", "0"]
        env = dict(os.environ)
        env.pop("MEMORYGATE_API_KEY", None)
        if api_key is not None:
            command += ["--api-key", api_key]
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_IMPORT_ROOT), env.get("PYTHONPATH")])
        )
        # Owned by the stub from here on and closed by _release(), so no ``with`` block.
        stderr = tempfile.TemporaryFile()  # noqa: SIM115
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        stub: StubMemoryGate | None = None
        try:
            url = _read_announced_url(process, deadline)
            stub = cls(process, url, api_key, stderr)
            stub._wait_until_healthy(deadline)
        except BaseException as exc:
            _abandon(process)
            message = _startup_failure(exc, process, stderr)
            if stub is not None:
                stub._release()
            else:
                stderr.close()
            if not isinstance(exc, Exception):
                raise
            raise StubMemoryGateError(message) from exc
        return stub

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``; receipts go to ``{url}/v1/receipts``."""
        return self._url

    @property
    def api_key(self) -> str | None:
        return self._api_key

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """None while it runs; 0 after a clean ``stop()``, ``-9`` after ``kill()``."""
        return self._process.poll()

    def stats(self) -> dict[str, Any]:
        """Counters: ``received``, ``stored``, ``duplicates``, ``dropped``, ``by_status``."""
        return self._call("GET", "/_stub/stats")

    def receipts(self) -> dict[str, dict[str, Any]]:
        """Stored receipts by ``receipt_id``, each exactly as it was posted."""
        return self._call("GET", "/_stub/receipts")

    def faults(self) -> dict[str, Any]:
        """The faults in force."""
        return self._call("GET", "/_stub/faults")

    def set_faults(self, **faults: Any) -> None:
        """Merge ``faults`` into those in force (see the server's docstring for the names).

        Raises ``ValueError`` naming the field when the stub refuses a value; nothing changes then.
        """
        response = self._control.post("/_stub/faults", json=faults)
        if response.status_code == 400:
            error = response.json()
            raise ValueError(f"{error.get('field')}: {error.get('detail')}")
        _check(response)

    def reset(self) -> None:
        """Forget stored receipts, counters and faults."""
        self._call("POST", "/_stub/reset")

    def stop(self) -> None:
        """Ask the stub to exit (SIGTERM), wait for it, and SIGKILL it if it lingers."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._release()

    def kill(self) -> None:
        """SIGKILL the stub: the crash case, connections reset without a goodbye."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
        self._release()

    def __enter__(self) -> StubMemoryGate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<StubMemoryGate {self._url} pid={self._process.pid}>"

    def _call(self, method: str, path: str) -> Any:
        response = self._control.request(method, path)
        _check(response)
        return response.json()

    def _wait_until_healthy(self, deadline: float) -> None:
        while True:
            try:
                if self._control.get("/v1/health").status_code == 200:
                    return
            except httpx.TransportError:
                if self._process.poll() is not None or time.monotonic() >= deadline:
                    raise
            if time.monotonic() >= deadline:
                raise TimeoutError("GET /v1/health never answered 200")
            time.sleep(0.05)

    def _release(self) -> None:
        self._control.close()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()


def _check(response: httpx.Response) -> None:
    if response.is_error:
        raise StubMemoryGateError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text}"
        )


def _read_announced_url(process: subprocess.Popen[bytes], deadline: float) -> str:
    """Wait for the child's "listening on http://..." line and return the URL in it."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"\n" not in output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no announcement within {STARTUP_TIMEOUT_SECONDS} s")
            if not selector.select(timeout=remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"the process exited with status {process.wait()}")
            output += chunk
    match = _ANNOUNCEMENT.search(output)
    if match is None:
        raise ValueError(f"unexpected first line: {output.decode(errors='replace').strip()}")
    return match.group(1).decode()


def _abandon(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _startup_failure(
    exc: BaseException, process: subprocess.Popen[bytes], stderr: IO[bytes]
) -> str:
    stderr.seek(0)
    captured = stderr.read().decode(errors="replace").strip() or "(empty)"
    return f"stub MemoryGate (pid {process.pid}) did not come up: {exc}\nstderr:\n{captured}"
