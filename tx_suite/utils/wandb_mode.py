"""Choose the W&B mode for a run without ever hanging on a missing network (plain Python).

Order: ``WANDB_MODE`` from the environment wins (``online``/``offline``/``disabled``; ``dryrun`` means
offline), except that ``online`` without an API key runs offline with a one-line warning, because
wandb would otherwise stop at an interactive login prompt; ``WANDB_DISABLED=true`` means disabled;
with no API key (no ``WANDB_API_KEY``, no netrc entry for the W&B host) the run is offline; with a
key, a short HTTP probe of the W&B server decides between online and offline (unreachable ->
offline with a one-line warning).
"""

from __future__ import annotations

import netrc
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0
_ALIASES = {"dryrun": "offline", "run": "online", "true": "online", "false": "disabled"}
MODES = ("online", "offline", "disabled", "shared")


def wandb_host(environ: Mapping[str, str] = os.environ) -> tuple[str, int]:
    """(host, port) of the W&B server (``WANDB_BASE_URL`` or api.wandb.ai)."""
    url = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "api.wandb.ai", port


def has_api_key(environ: Mapping[str, str] = os.environ) -> bool:
    """True when W&B has credentials: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE`` (the
    OIDC token login wandb accepts instead of a key) or a netrc entry for the W&B host.

    As wandb reads it: ``$NETRC``, else ``~/.netrc`` or ``~/_netrc``; the entry is named by the
    server's ``host:port`` when its URL has a port (``wandb login`` writes it so), else by the host.
    """
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    if environ.get("NETRC"):
        candidates = [Path(environ["NETRC"]).expanduser()]
    else:
        candidates = [Path.home() / ".netrc", Path.home() / "_netrc"]
    netrc_path = next((p for p in candidates if p.is_file()), None)
    if netrc_path is None:
        return False
    url = urlparse(environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL)
    try:
        entries = netrc.netrc(str(netrc_path))
    except (netrc.NetrcParseError, OSError):
        return False
    for machine in dict.fromkeys((url.netloc, wandb_host(environ)[0])):
        auth = entries.authenticators(machine)
        if auth and auth[2]:
            return True
    return False


def can_reach(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if an HTTP(S) request to ``url`` gets any HTTP response within ``timeout`` seconds.

    An HTTP error status (401, 404, ...) still means the server is reachable; DNS failures,
    refused or dropped connections, TLS failures (e.g. an intercepting proxy) and timeouts do not.
    Runs in a daemon thread and waits at most ``timeout`` seconds in total, because name
    resolution ignores socket timeouts.
    """
    ok: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                ok.append(True)
        except urllib.error.HTTPError:
            ok.append(True)
        except Exception:  # noqa: BLE001 - URLError, ssl errors, timeouts, resets: all "unreachable"
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def resolve_wandb_mode(environ: Mapping[str, str] = os.environ, probe=can_reach) -> tuple[str, str | None]:
    """Return ``(mode, warning)``: the W&B mode to use and a one-line warning or None.

    Raises:
        ValueError: ``WANDB_MODE`` holds an unknown value.
    """
    raw = (environ.get("WANDB_MODE") or "").strip().lower()
    if raw:
        mode = _ALIASES.get(raw, raw)
        if mode not in MODES:
            raise ValueError(f"WANDB_MODE={raw!r} is not one of {', '.join(MODES)} (or dryrun, run)")
        if mode in ("online", "shared") and not has_api_key(environ):
            # wandb.init would ask for a key on a terminal and wait there: an unattended run hangs
            return "offline", (f"W&B: WANDB_MODE={mode} but no API key (WANDB_API_KEY or `wandb login`); "
                               "logging offline instead, upload later with `wandb sync`")
        return mode, None
    if (environ.get("WANDB_DISABLED") or "").strip().lower() in ("1", "true", "yes"):
        return "disabled", None
    if not has_api_key(environ):
        return "offline", None
    url = environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    if not probe(url):
        return "offline", f"W&B: API key found but {url} is unreachable; logging offline instead"
    return "online", None
