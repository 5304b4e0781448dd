"""Child processes for tests: stderr collected line by line, waits for logged patterns."""

from __future__ import annotations

import re
import signal
import subprocess
import threading


class LoggedProcess:
    """A child process whose stderr lines are collected; waits for patterns in them."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            return next((m for m in map(regex.search, self.lines) if m), None)

        with self._changed:
            if not self._changed.wait_for(
                lambda: found() is not None or self.process.poll() is not None, timeout
            ):
                raise TimeoutError(f"{pattern!r} not logged:\n{''.join(self.lines)}")
            match = found()
        assert match is not None, "".join(self.lines)
        return match

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)
