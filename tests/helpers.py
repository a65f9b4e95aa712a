"""Running the project's commands as a user does (a subprocess of the installed interpreter), the services they
talk to, and reading the pages they write."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

BIN = Path(sys.executable).parent  # the virtualenv's scripts: mlflow, ray


def write_preset(path: Path, **search) -> str:
    """The quick preset with some search settings changed, as a user-written preset file."""
    import yaml

    from tuner.presets import load_preset

    preset = load_preset("quick")
    path.write_text(yaml.safe_dump({"trial": preset.trial, "search": {**preset.search, **search}}))
    return str(path)


def run_command(module: str, *args: str, cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_usage_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, exactly one line on stderr naming the problem, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real tracking server on loopback with a sqlite backend and served artifacts; yields its URI."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Driver:
    """`python -m tuner.search` in its own process group (as a terminal runs it), its output read line by line."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict | None = None) -> None:
        import os
        import queue
        import threading

        environment = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tuner.search", *args], cwd=cwd, env=environment,
                                     start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self._queue.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self._stderr.append), daemon=True).start()

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line)
        sink(None)

    def wait_for(self, pattern: str, *, timeout: float = 300) -> str | None:
        """The first new output line matching `pattern`; None if the driver ended first."""
        import queue
        import re

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                return None
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} within {timeout:.0f}s:\n{''.join(self.lines)}")

    def signal_group(self, signum: int) -> None:
        import os

        os.killpg(self.proc.pid, signum)

    def finish(self, *, timeout: float = 300) -> tuple[int, str, str]:
        """Exit status, all of stdout and all of stderr once the driver ends."""
        self.proc.wait(timeout=timeout)
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        deadline = time.monotonic() + 30
        while (not self._stderr or self._stderr[-1] is not None) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.proc.returncode, "".join(self.lines), "".join(s for s in self._stderr if s is not None)

    def kill(self) -> None:
        """SIGKILL to the driver and everything it started (its local Ray), as in a crash."""
        import signal

        try:
            self.signal_group(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)


class Page(HTMLParser):
    """An HTML page as html.parser reads it: its text, its table cells and its images' sources; a closing tag that
    does not close the open element fails."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text: list[str] = []
        self.cells: list[str] = []
        self.images: list[str] = []
        self.stack: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag not in ("img", "meta", "br"):
            self.stack.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag, f"</{tag}> closes another element"

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] in ("td", "th"):
            self.cells.append(data)

    @property
    def all_text(self) -> str:
        return "".join(self.text)
