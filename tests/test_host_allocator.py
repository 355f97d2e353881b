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

# Allocates, fills and frees 16 blocks of 16 MB together, four times (a training step's activations
# and gradients, each under glibc's 32 MiB mmap cap), with the call PyTorch's CPU allocator makes
# (posix_memalign, 64-byte alignment) and nothing else allocating in between, so the heap's layout is
# the same every run; reports the minor page faults of the last round (the first rounds fault in
# the heap's growth, alignment gaps included).
PROBE = """
import ctypes, json, resource
from tx_suite.utils.host_allocator import freed_memory_kept, keep_freed_memory
{setup}
libc = ctypes.CDLL(None)
libc.posix_memalign.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE = 16_000_000
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [ctypes.c_void_p() for _ in range(16)]
    for b in blocks:
        assert libc.posix_memalign(ctypes.byref(b), 64, SIZE) == 0
        ctypes.memset(b, 1, SIZE)
    for b in blocks:
        libc.free(b)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
rounds = [faults() for _ in range(4)]
print(json.dumps({{"applied": applied, "kept": freed_memory_kept(), "faults": rounds[-1]}}))
"""

PAGES = 16 * 16_000_000 // 4096  # pages of the 16 tensors: what fresh memory faults in


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
    assert kept["faults"] < PAGES / 20  # the 256 MB come from pages already mapped


@pytest.mark.parametrize("env", [{"TX_SUITE_MALLOC": "default"}, {"TX_SUITE_MALLOC": "0"},
                                 {"MALLOC_MMAP_MAX_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536"}])
def test_opt_out_and_user_settings_leave_glibc_alone(subprocess_env, env):
    result = probe(subprocess_env, "applied = keep_freed_memory()", **env)
    assert result["applied"] is False and result["kept"] is False
    assert result["faults"] > PAGES / 2


def test_a_misspelt_setting_is_refused_not_guessed(subprocess_env):
    code = ("import sys\nfrom tx_suite.cli.main import main\n"
            "sys.exit(main(['fit', '--config', 'experiments/translation/multi30k_de_en_quickstart.yaml']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**clean(subprocess_env), "TX_SUITE_MALLOC": "defualt"}, check=False)
    assert out.returncode == 2
    assert out.stderr.strip() == ("tx-suite fit: error: TX_SUITE_MALLOC='defualt': use 'default' (glibc's own malloc "
                                  "settings) or 'keep'")


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
