"""Storage URLs: which one a study uses (`resolve_storage`), and their credentials: expanded from the
environment when a storage is opened, masked in every message."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sweep.config import ConfigError

PASSWORD_ENV = "SWEEP_DB_PASSWORD"
_SERVERS = ("postgresql", "postgres", "mysql", "mariadb")


# ---- where and which URL -----------------------------------------------------------------------------


def studies_dir() -> Path:
    """Home of every study's files; `SWEEP_STUDIES_DIR` moves it (e.g. to a shared file system)."""
    return Path(os.environ.get("SWEEP_STUDIES_DIR", "studies")).resolve()


def study_dir(name: str) -> Path:
    return studies_dir() / name


def resolve_storage(name: str, cli: str | None = None, config: Mapping[str, Any] | None = None) -> str:
    """`--storage`, then `SWEEP_STORAGE`, then the file's `storage:`, then SQLite under studies/NAME/.

    The result is still unexpanded (``${VAR}`` kept): it is what gets printed and passed to workers.
    """
    for url in (cli, os.environ.get("SWEEP_STORAGE"), (config or {}).get("storage")):
        if url:
            return _absolute(url)
    return f"sqlite:///{study_dir(name) / 'study.db'}"


FILE_SCHEMES = ("sqlite:///", "journal:///")


def _absolute(url: str) -> str:
    """File URLs made absolute here, so workers started elsewhere open the same file.

    Both follow SQLAlchemy's sqlite rule: the path after the three slashes is as written, so
    ``sqlite:///studies/x.db`` is relative and ``journal:////shared/x.log`` (four slashes) absolute. A relative
    path whose first folder is also one at the root (``journal:///tmp/x.log``: the working directory's
    tmp/x.log, or /tmp/x.log?) is refused with both spellings: writing a file the user will not find, or that
    workers started elsewhere look for in their own working directory, is worse than asking.
    """
    check_not_in_memory(url)
    for scheme in FILE_SCHEMES:
        if url.startswith(scheme):
            path = url[len(scheme) :]
            first = "" if path.startswith("/") else path.split("/")[0]  # pathlib would drop a leading "./"
            if first not in ("", ".", "..") and Path("/", first).exists() and Path.cwd() != Path("/"):
                raise ConfigError(
                    f"{url} names {path} relative to the working directory ({scheme} is followed by the path "
                    f"as written, as in SQLAlchemy's sqlite:///); write {scheme}/{path} for /{path}, or "
                    f"{scheme}./{path} for {Path(path).resolve()}",
                    key="storage",
                )
            return scheme + str(Path(path).resolve())
    return url


def check_not_in_memory(url: str) -> None:
    """Refuse an in-memory SQLite URL (``sqlite://``, ``sqlite:///:memory:``, ``mode=memory``): the database
    lives in one connection of one process, and Optuna's engine drops it with its schema between calls."""
    if not url.startswith("sqlite:"):
        return
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if path.split("?")[0] in ("", ":memory:") or path.startswith("file::memory:") or "mode=memory" in url:
        raise ConfigError(
            f"{url} is an in-memory SQLite database: it lives in one connection of one process, so the workers, "
            "the launcher and later commands (status, report) would each see an empty or no study; use a file, "
            "sqlite:///PATH (the default: studies/NAME/study.db)",
            key="storage",
        )


# ---- credentials ---------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd)=)[^&#\s]*", re.IGNORECASE)


def _split_userinfo(url: str) -> tuple[str, str | None, str | None, str]:
    """(scheme://, user, password, rest after '@'); user is None without '@'. Tolerates a raw '@' in a password."""
    if "://" not in url:
        return "", None, None, url
    scheme, rest = url.split("://", 1)
    netloc_end = len(rest)
    for sep in ("?", "#"):  # the userinfo cannot reach into the query
        if sep in rest and "@" not in rest[rest.index(sep) :]:
            netloc_end = min(netloc_end, rest.index(sep))
    if "@" not in rest[:netloc_end]:
        return scheme + "://", None, None, rest
    creds, host = rest[:netloc_end].rsplit("@", 1)
    user, _, password = creds.partition(":")
    return scheme + "://", user, password if ":" in creds else None, host + rest[netloc_end:]


def mask(url: str) -> str:
    """The URL with any password (in the userinfo or a ``password=`` query) replaced, for every message."""
    scheme, user, password, rest = _split_userinfo(url)
    if password is not None:
        url = f"{scheme}{user}:***@{rest}"
    return _QUERY_SECRET.sub(r"\1***", url)


def scrub(text: str, *urls: str) -> str:
    """A message (a driver's error, a log line) with every URL in it masked and the URLs' passwords removed.

    Drivers and SQLAlchemy sometimes echo a DSN or the URL they failed to parse; the literal password is
    replaced too, raw and percent-encoded, in case it appears outside a URL.
    """
    text = _URL.sub(lambda m: mask(m.group(0)), text)
    for url in urls:
        password = _split_userinfo(url)[2]
        for secret in {password, unquote(password or ""), quote(unquote(password or ""), safe="")} - {None, ""}:
            if len(secret) >= 3:  # a one-letter password would mask every such letter; it is no secret anyway
                text = text.replace(secret, "***")
    return text


def expand_url(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The URL a process connects with: ``${VAR}`` replaced from the environment, `PASSWORD_ENV` filled in.

    Done at open time in every process, so the password lives only in the environment of the launcher and the
    workers, never in the URL that is printed, saved or pickled for submitit. A value landing in the userinfo
    is percent-encoded (passwords may contain '@', ':' or '/'). A missing variable is a `ConfigError`.
    """
    env = os.environ if environ is None else environ
    userinfo_end = _userinfo_end(url)

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"storage URL {mask(url)} uses ${{{name}}}, but {name} is not set", key="storage")
        return quote(env[name], safe="") if match.start() < userinfo_end else env[name]

    expanded = _VAR.sub(value, url)
    scheme, user, password, rest = _split_userinfo(expanded)
    if user and password is None and env.get(PASSWORD_ENV) and expanded.startswith(_SERVERS):
        expanded = f"{scheme}{user}:{quote(env[PASSWORD_ENV], safe='')}@{rest}"
    return expanded


def _userinfo_end(url: str) -> int:
    scheme, user, _, rest = _split_userinfo(url)
    return -1 if user is None else len(url) - len(rest)
