"""Who may use the app: sign-in credentials (``--auth``, ``--auth-file``, the environment) and when they are required.

Credentials go to Gradio's own sign-in (``launch(auth=...)``), which guards the page and the API alike.
A server reachable from other machines (``--share``, or a ``--host`` that is not loopback) must have
them unless ``--no-auth`` says it is meant to be open. Error messages name the source and line, never
the password.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

AUTH_ENV = "EDVAE_APP_AUTH"            # user:password (several: one a line), instead of --auth
AUTH_FILE_ENV = "EDVAE_APP_AUTH_FILE"  # a file of user:password lines, instead of --auth-file
HOW = (f"add --auth USER:PASSWORD or --auth-file PATH (or set {AUTH_ENV} / {AUTH_FILE_ENV}), "
       "or pass --no-auth to serve it open on purpose")


class AccessError(ValueError):
    """A credential or exposure problem, said in one line."""


def parse_credential(text: str, where: str) -> tuple[str, str]:
    """``user:password`` -> (user, password); the password may hold colons, neither part may be empty."""
    user, colon, password = text.partition(":")
    user = user.strip()  # Gradio strips the name typed at sign-in, so a padded name could never sign in
    if not colon:
        raise AccessError(f"{where}: expected user:password (a name, a colon, a password), found no colon")
    if not user or not password:
        raise AccessError(f"{where}: expected user:password, the {'user name' if not user else 'password'} is empty")
    return user, password


def parse_lines(text: str, source: str) -> list[tuple[str, str]]:
    """One ``user:password`` a line; blank lines and ``#`` comments are skipped."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            found.append(parse_credential(line, f"{source} line {number}"))
    return found


def read_auth_file(path: str | Path, source: str) -> list[tuple[str, str]]:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AccessError(f"{source} {path}: cannot read it ({type(err).__name__}: "
                          f"{getattr(err, 'strerror', None) or 'not UTF-8 text'})") from None
    found = parse_lines(text, f"{source} {path}")
    if not found:
        raise AccessError(f"{source} {path} holds no user:password line")
    return found


def credentials(auth: list[str] | None, auth_file: str | None,
                environ: dict | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """All credentials from the flags and the environment, and the names of their sources."""
    env = os.environ if environ is None else environ
    found, sources = [], []
    for i, text in enumerate(auth or [], start=1):
        found.append(parse_credential(text, f"--auth #{i}"))
        sources.append("--auth")
    if auth_file:
        found += read_auth_file(auth_file, "--auth-file")
        sources.append("--auth-file")
    if env.get(AUTH_ENV):
        found += parse_lines(env[AUTH_ENV], AUTH_ENV)
        sources.append(AUTH_ENV)
    if env.get(AUTH_FILE_ENV):
        found += read_auth_file(env[AUTH_FILE_ENV], AUTH_FILE_ENV)
        sources.append(AUTH_FILE_ENV)
    users = [user for user, _ in found]
    twice = sorted({u for u in users if users.count(u) > 1})
    if twice:
        raise AccessError(f"user {twice[0]!r} is given more than once ({', '.join(dict.fromkeys(sources))}): "
                          "keep one password per user")
    return found, list(dict.fromkeys(sources))


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host``: localhost or a loopback address (any other name counts as exposed)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure(host: str, share: bool) -> str | None:
    """Why others could reach the server (None: this machine only)."""
    if share:
        return "--share publishes the app on a public *.gradio.live link"
    if not is_loopback(host):
        return f"--host {host} makes the app reachable from other machines"
    return None


def check_access(host: str, share: bool, users: list, sources: list[str], no_auth: bool) -> str | None:
    """Refuse an exposed server without sign-in; returns the warning to show when it is open on purpose."""
    reason = exposure(host, share)
    if no_auth and users:
        raise AccessError(f"--no-auth contradicts the credentials given ({', '.join(sources)}): drop one or the other")
    if reason and not users and not no_auth:
        raise AccessError(f"{reason}, so it needs sign-in: {HOW}")
    if reason and no_auth:
        return f"{reason} and was started with --no-auth: anyone who can reach it can use it."
    return None
