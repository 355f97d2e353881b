"""benchmarks/gpu_session.sh brings back only what its own call wrote (a stub stands in for python)."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_session.sh"

# Stands in for python: `-c` (the version line) and the benchmarks succeed at once; the translation
# run writes result.json, weights and hypotheses only when WRITE=1.
STUB = """#!/usr/bin/env bash
[[ $1 == -c ]] && { echo stub; exit 0; }
if [[ $1 == *translation_train.py && ${WRITE:-} == 1 ]]; then
    mkdir -p "$RUN_DIR/checkpoints" "$RUN_DIR/test_last_beam1"
    echo '{"new": true}' > "$RUN_DIR/result.json"
    echo new > "$RUN_DIR/checkpoints/averaged.ckpt"
    echo new > "$RUN_DIR/test_last_beam1/test_hypotheses.txt"
fi
exit 0
"""


def _run(tmp_path, write):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    run_dir, out = tmp_path / "run", tmp_path / f"out{write}"
    env = {**os.environ, "PY": str(stub), "RUN_DIR": str(run_dir), "OUT": str(out), "RESUME": "1",
           "WRITE": str(int(write))}
    subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return out


@pytest.fixture
def stale_run(tmp_path):
    """A run directory as a previous call left it: result, averaged weights, hypotheses."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "test_old_beam1").mkdir()
    (run_dir / "result.json").write_text('{"old": true}')
    (run_dir / "checkpoints" / "averaged.ckpt").write_text("old")
    (run_dir / "test_old_beam1" / "test_hypotheses.txt").write_text("old")
    past = 1_000_000_000
    for p in run_dir.rglob("*"):
        os.utime(p, (past, past))
    return tmp_path


def test_a_call_that_writes_nothing_brings_back_no_stale_result(stale_run):
    out = _run(stale_run, write=False)
    assert (out / "machine.txt").exists()
    assert not (out / "translation_result.json").exists()
    assert not (out / "translation_averaged.ckpt").exists()
    assert not (out / "translation_hypotheses.tgz").exists()


def test_a_call_that_scores_brings_back_its_own_files_only(stale_run):
    out = _run(stale_run, write=True)
    assert (out / "translation_result.json").read_text().strip() == '{"new": true}'
    assert (out / "translation_averaged.ckpt").read_text().strip() == "new"
    names = subprocess.run(["tar", "tzf", str(out / "translation_hypotheses.tgz")], capture_output=True,
                           text=True, check=True).stdout.split()
    assert names == ["test_last_beam1/test_hypotheses.txt"]
