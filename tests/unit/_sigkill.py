"""Kill a child process that fills a cache once it has completed some shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def kill_after_shards(tmp_path, child: str, cache: Path, suffix: str, n: int = 3) -> dict:
    """Run ``child`` (a script template with ``{tests}`` and ``{cache}``), SIGKILL it once
    ``n`` shard records exist; return ``{shard: mtime of its data file}`` of the shards it
    completed."""
    script = tmp_path / "child.py"
    script.write_text(child.format(tests=str(ROOT / "tests"), cache=str(cache)))
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL)
    records = cache / "shards"
    deadline = time.monotonic() + 120
    try:
        while len(list(records.glob("*.json"))) < n:
            assert proc.poll() is None, "the child exited before it could be killed"
            assert time.monotonic() < deadline, "the child wrote no shard in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(int(p.stem) for p in records.glob("*.json"))
    return {k: (records / f"{k:05d}{suffix}").stat().st_mtime_ns for k in done}


def assert_resumed(report, before: dict, cache: Path, suffix: str, n_shards: int) -> None:
    """The resumed run skipped exactly the completed shards, did not rewrite them, and
    left no temporary file."""
    records = cache / "shards"
    assert report.skipped == sorted(before)
    assert sorted(report.computed + report.skipped) == list(range(n_shards))
    for k, mtime in before.items():  # complete shards were not redone
        assert (records / f"{k:05d}{suffix}").stat().st_mtime_ns == mtime
    assert not [p for p in records.iterdir() if p.name.startswith(".")]
