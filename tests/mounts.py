"""Real read-only and full file systems for tests: mounting needs root. CI runs as root, so there a
mount that fails is a test failure, never a silent skip; elsewhere the test says why it skips."""

import os
import subprocess

import pytest


def mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True)
    if r.returncode != 0:
        why = f"cannot mount here (needs root): {r.stderr.decode().strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def unmount(path) -> None:
    subprocess.run(["umount", "-l", str(path)])
