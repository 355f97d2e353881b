"""W&B: mode choice that never hangs, and an offline run that touches no network."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tx_suite.utils.wandb_mode import can_reach, has_api_key, resolve_wandb_mode

TINY = str(Path(__file__).resolve().parent / "configs" / "tiny_mnist.yaml")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """urllib would send the probes of 127.0.0.1 through a configured proxy, whose 502 counts as
    "reachable": these tests are about the direct connection."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_mode_from_environment():
    assert resolve_wandb_mode({"WANDB_MODE": "disabled"}) == ("disabled", None)
    assert resolve_wandb_mode({"WANDB_MODE": "dryrun", "WANDB_API_KEY": "k"}) == ("offline", None)
    assert resolve_wandb_mode({"WANDB_MODE": "online", "WANDB_API_KEY": "k"}) == ("online", None)
    with pytest.raises(ValueError, match="WANDB_MODE='sometimes' is not one of online, offline, disabled, shared"):
        resolve_wandb_mode({"WANDB_MODE": "sometimes"})


def test_no_key_means_offline_without_probing(tmp_path):
    def probe(*_):
        raise AssertionError("must not touch the network without an API key")

    env = {"NETRC": str(tmp_path / "none")}
    assert resolve_wandb_mode(env, probe=probe) == ("offline", None)


def test_explicit_online_without_key_goes_offline_instead_of_prompting(tmp_path):
    # wandb.init would stop at its interactive login prompt; the explicit mode does not probe either
    def probe(*_):
        raise AssertionError("an explicit WANDB_MODE never probes the network")

    env = {"WANDB_MODE": "online", "NETRC": str(tmp_path / "none")}
    mode, warning = resolve_wandb_mode(env, probe=probe)
    assert mode == "offline" and "no API key" in warning and "\n" not in warning
    # shared (several writers to one online run) prompted for a key on a terminal too
    mode, warning = resolve_wandb_mode({**env, "WANDB_MODE": "shared"}, probe=probe)
    assert mode == "offline" and "WANDB_MODE=shared but no API key" in warning
    assert resolve_wandb_mode({**env, "WANDB_MODE": "shared", "WANDB_API_KEY": "k"}, probe=probe) == ("shared", None)
    assert resolve_wandb_mode({**env, "WANDB_MODE": "offline"}, probe=probe) == ("offline", None)


def test_netrc_entry_counts_as_key(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    assert has_api_key({"NETRC": str(netrc)})
    assert not has_api_key({"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"})


def test_netrc_entry_of_a_local_server_is_named_host_and_port(tmp_path, monkeypatch):
    """``wandb login --host http://localhost:8080`` writes ``machine localhost:8080``: such a user
    with WANDB_MODE=online was sent offline for "no API key". Also wandb's ~/_netrc fallback."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine localhost:8080\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    env = {"NETRC": str(netrc), "WANDB_BASE_URL": "http://localhost:8080", "WANDB_MODE": "online"}
    assert has_api_key(env)
    assert resolve_wandb_mode(env, probe=lambda url: True) == ("online", None)
    assert not has_api_key({**env, "WANDB_BASE_URL": "http://localhost:9090"})
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "_netrc").write_text(netrc.read_text())
    (tmp_path / "_netrc").chmod(0o600)
    assert has_api_key({"WANDB_BASE_URL": "http://localhost:8080"})


def test_identity_token_file_counts_as_key(tmp_path):
    # wandb logs in with an OIDC token file instead of a key; such a user must not be sent offline
    env = {"NETRC": str(tmp_path / "none"), "WANDB_IDENTITY_TOKEN_FILE": str(tmp_path / "token.jwt")}
    assert has_api_key(env)
    assert resolve_wandb_mode(env, probe=lambda url: True) == ("online", None)


def test_key_without_network_falls_back_to_offline_quickly():
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}"}
    start = time.monotonic()
    mode, warning = resolve_wandb_mode(env)
    assert mode == "offline" and "unreachable" in warning and "\n" not in warning
    assert time.monotonic() - start < 5
    assert resolve_wandb_mode(env, probe=lambda url: True) == ("online", None)


def test_probe_never_hangs(monkeypatch):
    import urllib.request

    def stuck(*args, **kwargs):  # a DNS lookup or TLS handshake that never returns
        time.sleep(10)

    monkeypatch.setattr(urllib.request, "urlopen", stuck)
    start = time.monotonic()
    assert not can_reach("https://api.wandb.ai", timeout=0.5)
    assert time.monotonic() - start < 1.5


def test_probe_accepts_any_http_answer():
    import http.server

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        assert can_reach(f"http://127.0.0.1:{server.server_address[1]}/", timeout=5)
    finally:
        thread.join(5)
        server.server_close()
    assert not can_reach(f"http://127.0.0.1:{closed_port()}/", timeout=2)


class Listener:
    """A local TCP server that counts connection attempts (stands in for W&B and any proxy)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("wandb_mode", ["offline", None, "online"])
def test_offline_fit_writes_wandb_run_and_touches_no_network(runs_dir, subprocess_env, tmp_path, wandb_mode):
    """There is no API key here. Unset (the default), the run is offline, and wandb-core must not
    post its usage metrics either (it did until the CLI set WANDB_MODE for the process). ``online``
    must go offline rather than wait at wandb's login prompt (or fail at its no-tty error)."""
    listener = Listener()
    url = f"http://127.0.0.1:{listener.port}"
    env = {k: v for k, v in subprocess_env.items()
           if k not in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE")}
    env.update(WANDB_BASE_URL=url, HTTP_PROXY=url, HTTPS_PROXY=url, http_proxy=url,
               https_proxy=url, NO_PROXY="", no_proxy="", NETRC=str(tmp_path / "no-netrc"))
    if wandb_mode:
        env["WANDB_MODE"] = wandb_mode
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tx_suite", "fit", "--config", TINY, "--trainer.max_epochs=1",
             "--trainer.enable_progress_bar=false", "--tags", "[offline-test]"],
            env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        listener.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert listener.connections == 0  # neither W&B nor anything else went to the network

    (run,) = (runs_dir / "tiny_mnist").iterdir()
    (offline_run,) = (run / "wandb").glob("offline-run-*")
    assert list(offline_run.glob("run-*.wandb")), "the W&B run file for `wandb sync`"
    info = json.loads((run / "run_info.json").read_text())
    assert info["wandb"]["mode"] == "offline" and info["wandb"]["id"] == run.name
    assert info["wandb"]["dir"] == str(offline_run)
    assert f"wandb sync {offline_run}" in proc.stderr
    assert ("WANDB_MODE=online but no API key" in proc.stderr) == (wandb_mode == "online")
    assert (run / "metrics.csv").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    # config.yaml keeps the logger as configured: this run's offline choices (log_model off, its
    # id, the tags folded in) would otherwise stick to every re-run of the file
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["tags"] == ["offline-test"]
    for entry in saved["trainer"]["logger"] or []:
        init = entry.get("init_args") or {}
        assert init.get("log_model", True) is True and init.get("id") is None and not init.get("tags"), entry


def test_offline_run_keeps_its_logged_tables_in_the_run_directory(runs_dir, subprocess_env, tmp_path):
    """W&B stages the files of logged tables (and their images) in its data directory, by default
    ~/.local/share/wandb, and the offline run's record points there: a run directory copied to
    another machine, or a cleaned home, would `wandb sync` without them. They stay in the run."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in subprocess_env.items() if k not in ("WANDB_API_KEY", "WANDB_DATA_DIR", "XDG_DATA_HOME")}
    env.update(WANDB_MODE="offline", HOME=str(home))
    proc = subprocess.run(
        [sys.executable, "-m", "tx_suite", "fit", "--config", TINY, "--trainer.max_epochs=1",
         "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
         "--trainer.callbacks+=cli_fixtures.LogImageTable"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (runs_dir / "tiny_mnist").iterdir()
    (offline_run,) = (run / "wandb").glob("offline-run-*")
    assert list((offline_run / "files" / "media" / "table").rglob("*.table.json"))
    outside = [p for p in home.rglob("*") if p.is_file() and "artifacts" in p.parts]
    assert not outside, outside
    staged = [p for p in (run / "wandb").rglob("*") if p.is_file() and "staging" in p.parts]
    assert len(staged) >= 2, staged  # the table's JSON and its image


@pytest.mark.parametrize("value", ["1", "true", "yes", " True "])
def test_wandb_disabled_variable_disables_wandb(tmp_path, value):
    def probe(*_):
        raise AssertionError("a disabled run never probes the network")

    env = {"WANDB_DISABLED": value, "WANDB_API_KEY": "k", "NETRC": str(tmp_path / "none")}
    assert resolve_wandb_mode(env, probe=probe) == ("disabled", None)


@pytest.mark.parametrize("mode", ["offline", "disabled", "shared"])
def test_log_model_is_off_unless_online(mode):
    from tx_suite.cli.loggers import wandb_log_model

    assert wandb_log_model(True, mode) is False and wandb_log_model("all", mode) is False
    assert wandb_log_model(True, "online") is True and wandb_log_model("all", "online") == "all"
    assert wandb_log_model(None, "online") is False


def test_configure_loggers_sets_wandb_identity_tags_and_resume(tmp_path):
    from jsonargparse import Namespace

    from tx_suite.cli.loggers import configure_loggers

    cfg = [Namespace(class_path="pytorch_lightning.loggers.WandbLogger",
                     init_args=Namespace(project="p", log_model=True, tags=["mine", "both"]))]
    (wb,) = configure_loggers(cfg, run_dir=tmp_path / "r1", experiment="exp", subcommand="fit",
                              tags=["cli", "both"], wandb_mode="offline", wandb_id="r1")
    init = wb.init_args
    assert init.tags == ["both", "cli", "mine"]  # the config's own tags are kept, not replaced
    assert init.resume == "allow"  # --ckpt_path last continues the same W&B run
    assert init.log_model is False and init.mode == "offline" and init.id == "r1"
    assert init.group == "exp" and init.job_type == "fit" and init.name == "exp/r1"


@pytest.mark.parametrize("status, exit_code", [("finished", 0), ("failed", 1), ("interrupted", 1)])
def test_finish_wandb_reports_failure_exit_code(monkeypatch, status, exit_code):
    import wandb

    from tx_suite.cli.loggers import finish_wandb

    calls = []
    monkeypatch.setattr(wandb, "run", object())
    monkeypatch.setattr(wandb, "finish", lambda **kwargs: calls.append(kwargs))
    finish_wandb(status)
    assert calls == [{"exit_code": exit_code}]
