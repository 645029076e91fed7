"""Storage URLs: which one a study uses (`resolve_storage`), and their credentials: expanded from the
environment (or a password file) when a storage is opened, masked in every message, never written in clear."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from sweep.schema import ConfigError

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

# ${VAR}: an environment variable; ${file:PATH}: a file's content (PATH percent-encoded), see `for_workers`.
_VAR = re.compile(r"\$\{(?:file:([^}]*)|([A-Za-z_][A-Za-z0-9_]*))\}")
PASSWORD_FILE = "storage-password"  # in the study folder, mode 0600: a literal password, for the workers
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
    first, _, between = creds.partition("@")
    if "?" in between:  # the last '@' is in the query (`?options=a@b`): the first one ends the userinfo
        creds, host = first, rest[len(first) + 1 : netloc_end]
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
    replaced too, raw and percent-encoded, in case it appears outside a URL, and so is each part of it between
    raw '@'s: a driver splits such a password at its first '@' and calls the rest the host name.
    """
    text = _URL.sub(lambda m: mask(m.group(0)), text)
    for url in urls:
        raw = _split_userinfo(url)[2] or ""
        password = unquote(raw)
        secrets = {raw, password, quote(password, safe=""), *raw.split("@"), *password.split("@")}
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 3:  # a one-letter password would mask every such letter; it is no secret anyway
                text = text.replace(secret, "***")
    return text


def expand_url(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The URL a process connects with: ``${VAR}`` replaced from the environment, ``${file:PATH}`` by the file's
    content, `PASSWORD_ENV` filled in.

    Done at open time in every process, so the password lives only in the environment (or the 0600 file) of
    the launcher and the workers, never in the URL that is printed, saved or pickled for submitit. A value
    landing in the userinfo is percent-encoded (passwords may contain '@', ':' or '/'). A missing variable or
    file, or a raw '@' in the URL's own password, is a `ConfigError`.
    """
    env = os.environ if environ is None else environ
    _refuse_raw_at(url)
    userinfo_end = _userinfo_end(url)

    def value(match: re.Match[str]) -> str:
        path, name = match.groups()
        if path is not None:
            text = _read_password_file(url, Path(unquote(path)))
        elif name in env:
            text = env[name]
        else:
            raise ConfigError(f"storage URL {mask(url)} uses ${{{name}}}, but {name} is not set", key="storage")
        in_query = path is not None and "?" in url[: match.start()]  # `for_workers`' ?password=${file:…}
        return quote(text, safe="") if match.start() < userinfo_end or in_query else text

    expanded = _VAR.sub(value, url)
    scheme, user, password, rest = _split_userinfo(expanded)
    if user and password is None and env.get(PASSWORD_ENV) and expanded.startswith(_SERVERS):
        expanded = f"{scheme}{user}:{quote(env[PASSWORD_ENV], safe='')}@{rest}"
    return expanded


def for_workers(url: str, study_folder: Path) -> str:
    """The URL to hand to workers (pickled by submitit into the job folders): no password in clear.

    A password written into the URL itself (not a ``${VAR}``), in its userinfo or as a ``?password=`` query
    value, goes to `PASSWORD_FILE` (``-query`` for the latter) in the study folder, mode 0600, and the URL
    names that file instead (``${file:PATH}``), read back by `expand_url` when a worker opens the storage;
    ``${VAR}`` references stay as they are, to be expanded from the workers' environment.
    """
    scheme, user, password, rest = _split_userinfo(url)
    query = next((m for m in _QUERY_SECRET.finditer(url) if _VAR.sub("", m.group(0)[len(m.group(1)) :])), None)
    if query is not None:  # `?password=…`: its value goes to the file the same way
        secret = unquote(query.group(0)[len(query.group(1)) :])
        path = _write_password_file(study_folder / f"{PASSWORD_FILE}-query", secret)
        url = f"{url[: query.start()]}{query.group(1)}${{file:{quote(str(path), safe='/._-~+,=')}}}{url[query.end() :]}"
        scheme, user, password, rest = _split_userinfo(url)
    if password is None or not _VAR.sub("", password):
        return url
    path = _write_password_file(study_folder / PASSWORD_FILE, unquote(_split_userinfo(expand_url(url))[2] or ""))
    return f"{scheme}{user}:${{file:{quote(str(path), safe='/._-~+,=')}}}@{rest}"


def _write_password_file(path: Path, password: str) -> Path:
    """A password file in the study folder, mode 0600 from its creation, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password)
    os.chmod(tmp, 0o600)  # O_CREAT's mode applies to a new file only
    os.replace(tmp, path)
    return path


def _read_password_file(url: str, path: Path) -> str:
    try:
        return path.read_text().rstrip("\n")
    except OSError as exc:
        raise ConfigError(
            f"storage URL {mask(url)} takes its password from {path}, which cannot be read ({exc.strerror}); "
            "`sweep launch` writes it there for its workers (mode 0600)",
            key="storage",
        ) from None


def _refuse_raw_at(url: str) -> None:
    """A raw '@' in the userinfo: sweep reads up to the last '@', drivers to the first, which would send the
    rest of the password to DNS as a host name and print it in their errors. Say how to write it instead."""
    scheme, user, password, rest = _split_userinfo(url)
    if user is None or "@" not in _VAR.sub("", f"{user}:{password or ''}"):
        return
    hidden = "%40".join("***" if part else "" for part in _VAR.sub("x", password or "").split("@"))
    fixed = f"{scheme}{quote(user, safe='${}')}{':' + hidden if password is not None else ''}@{rest}"
    raise ConfigError(
        f"storage URL {mask(url)} has a raw '@' in its user name or password; percent-encode it ('@' → %40, "
        f"and '%' → %25), as in {fixed}, or take the password from the environment "
        f"(${{{PASSWORD_ENV}}} in the URL, or {PASSWORD_ENV} with a password-less URL)",
        key="storage",
    )


def _userinfo_end(url: str) -> int:
    scheme, user, _, rest = _split_userinfo(url)
    return -1 if user is None else len(url) - len(rest)
