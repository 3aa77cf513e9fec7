"""How a run gets its Ray: a local instance of its own, or an existing cluster it joins — token auth included.

Ray (>= 2.5x) protects a cluster with a token when one exists where ``ray start --head`` runs
(``ray get-auth-token --generate`` writes ``~/.ray/auth_token``). A client that names the cluster's address
never switches token auth on by itself, so a driver holding the right token still fails with Ray's
"Authentication token is missing or incorrect" after a 20-second wait. rlad therefore turns token auth on
for the driver whenever it holds a token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token``; a cluster without token auth accepts such a client too), checks that something
listens at the address before Ray's own retries start, and turns Ray's failures into one line that says
what to do (:class:`RayConnectError`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["RayConnectError", "find_token", "ray_session"]

TOKEN_HELP = (
    "copy the head node's ~/.ray/auth_token to this machine's ~/.ray/auth_token (or set RAY_AUTH_TOKEN to its "
    "text); README 'Scale out on a Ray cluster'"
)


class RayConnectError(ConnectionError):
    """The driver could not join the Ray cluster it was pointed at; the message says why and what to do."""


def find_token() -> tuple[str, str] | None:
    """(where, token) of the Ray token this process would send, looked up in Ray's own order, else None."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN", os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    token = path.read_text().strip() if path.is_file() else ""
    return (str(path), token) if token else None


def _host_port(address: str) -> tuple[str, int] | None:
    """Host and port of a ``host:port`` GCS address; None for what Ray resolves itself (``auto``, ``ray://``)."""
    if address == "auto" or "://" in address or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


def _listening(host: str, port: int, timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def join(address: str, env: dict[str, str], logging_level: int = logging.INFO) -> str:
    """Connect this process to the cluster at ``address``; returns the GCS address Ray reports."""
    import ray
    from ray.exceptions import AuthenticationError

    target = _host_port(address)
    if target and not _listening(*target):
        raise RayConnectError(
            f"no Ray cluster answers at {address}: start one there with `ray start --head --port={target[1]}`, "
            "or pass the head's address with --ray-address (train.ray_address)"
        )
    token = find_token()
    if token and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        # Ray's core read its settings when it was imported: refresh them, as Ray does when it turns auth on
        from ray._raylet import Config

        Config.initialize("")
    try:
        context = ray.init(address=address, runtime_env={"env_vars": env}, logging_level=logging_level)
    except AuthenticationError as err:  # RAY_AUTH_MODE=token set by the user, and no token here
        why = f"the Ray cluster at {address} needs a token and this machine has none: {TOKEN_HELP}"
        raise RayConnectError(why) from err
    except ConnectionError as err:
        ray.shutdown()
        if token is None:
            why = f"it asks for a token (token authentication) and this machine has none: {TOKEN_HELP}"
        else:
            why = f"it refused the token from {token[0]}, which is not the head node's: {TOKEN_HELP}"
        raise RayConnectError(f"could not join the Ray cluster at {address}: {why}") from err
    return context.address_info["gcs_address"]


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the cluster at ``address`` (else at Ray's own RAY_ADDRESS, as inside a ``ray job submit`` job), or
    start a local Ray for the run (stopped after it). A session that is already connected (a test's, a
    notebook's) is used as it is. ``RLAD_CACHE`` travels to the actors."""
    import ray

    if ray.is_initialized():
        yield
        return
    from rlad.console import child_env, ray_logging_level

    env = {k: os.environ[k] for k in ("RLAD_CACHE",) if k in os.environ} | child_env()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        gcs = join(address, env, ray_logging_level())
        print(f"Ray: joined the cluster at {gcs} ({_describe(ray.cluster_resources())})", flush=True)
    else:
        ray.init(include_dashboard=False, runtime_env={"env_vars": env}, logging_level=ray_logging_level())
        print(f"Ray: started a local instance ({_describe(ray.cluster_resources())})", flush=True)
    try:
        yield
    finally:
        ray.shutdown()


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}s" for k in ("CPU", "GPU"))
