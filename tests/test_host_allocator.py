"""keep_freed_memory: large CPU tensors reuse the heap's pages instead of faulting fresh ones in.

mallopt settings are process-wide and cannot be undone, so every check runs in a subprocess.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="glibc malloc only")

# Allocates, fills and frees a 200 MB tensor twice (as a training step's (N, V) float32 logits do
# every step) and reports the minor page faults of the second round.
PROBE = """
import json, resource, sys, torch
from tx_suite.utils.host_allocator import freed_memory_kept, keep_freed_memory
{setup}
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(50_000_000).fill_(1.0)
    del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(json.dumps({{"applied": applied, "kept": freed_memory_kept(), "faults": faults()}}))
"""

PAGES = 200_000_000 // 4096  # pages of the tensor: what a fresh mmap faults in


def clean(env: dict[str, str]) -> dict[str, str]:
    """``env`` without malloc settings of the machine running the tests."""
    return {k: v for k, v in env.items() if not k.startswith(("MALLOC_", "TX_SUITE_MALLOC", "GLIBC_TUNABLES"))}


def probe(base_env: dict[str, str], setup: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         env={**clean(base_env), **env}, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults(subprocess_env):
    default = probe(subprocess_env, "applied = None")
    kept = probe(subprocess_env, "applied = keep_freed_memory()")
    assert default == {"applied": None, "kept": False, "faults": pytest.approx(PAGES, rel=0.2)}
    assert kept["applied"] is True and kept["kept"] is True
    assert kept["faults"] < PAGES / 20  # the second 200 MB comes from pages already mapped


@pytest.mark.parametrize("env", [{"TX_SUITE_MALLOC": "default"}, {"TX_SUITE_MALLOC": "0"},
                                 {"MALLOC_MMAP_MAX_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"}])
def test_opt_out_and_user_settings_leave_glibc_alone(subprocess_env, env):
    result = probe(subprocess_env, "applied = keep_freed_memory()", **env)
    assert result["applied"] is False and result["kept"] is False
    assert result["faults"] > PAGES / 2


def test_unrelated_glibc_tunables_do_not_opt_out(subprocess_env):
    assert probe(subprocess_env, "applied = keep_freed_memory()", GLIBC_TUNABLES="glibc.cpu.x86_ibt=off")["applied"] is True


def test_lightning_subcommands_apply_it_and_others_do_not(subprocess_env):
    code = ("import contextlib, io, json\n"
            "from tx_suite.cli.main import main\n"
            "from tx_suite.utils.host_allocator import freed_memory_kept\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['{command}', '--help'])\n"
            "print(json.dumps(freed_memory_kept()))\n")
    for command, expected in (("compare", False), ("fit", True)):
        out = subprocess.run([sys.executable, "-c", code.format(command=command)], capture_output=True, text=True,
                             env=clean(subprocess_env), timeout=120, check=True)
        assert json.loads(out.stdout.strip().splitlines()[-1]) is expected, command
