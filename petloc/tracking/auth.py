"""`petloc tracking-server --auth`: MLflow's own basic-auth app in front of the runs and the registry.

Users, their passwords and their permissions on each experiment and registered model live in
an auth database beside the backend (a SQLite file in the store's folder, or the backend's
PostgreSQL database itself). The admin user is created on the first start, from a password
the operator gives in MLFLOW_AUTH_ADMIN_PASSWORD or a file: MLflow ships none, and petloc
neither invents nor prints one.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from petloc.errors import PetlocError
from petloc.tracking.store import first_line, shown_uri

PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"  # MLflow's own variable
USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
CONFIG_ENV = "MLFLOW_AUTH_CONFIG_PATH"
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
DEFAULT_ADMIN = "admin"
# A new user may read every experiment and model and create their own; changing or deleting
# anyone else's needs a grant. MLflow's own default, and what a shared server should start from.
DEFAULT_PERMISSION = "READ"
PASSWORD_FILE_MAX_BYTES = 4096


@dataclass(frozen=True)
class Auth:
    """What `--auth` was given: where users live, what a new user may do, the admin's first password."""

    database: str | None = None  # default: beside the backend
    default_permission: str = DEFAULT_PERMISSION
    password_file: str | None = None


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a name counts when all its addresses do)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses
    )


def check_door(host: str, auth: bool | None) -> None:
    """Serving other machines is a choice the operator makes out loud: with users, or without."""
    if auth is None and not is_loopback(host):
        raise PetlocError(
            f"--host {host} lets other machines in: add --auth (users, passwords and permissions; "
            "see the README), or --no-auth on a network where everyone may change and delete every "
            "run and model"
        )


def auth_database(backend: str, given: str | None) -> str:
    """Where users and permissions live: the given URI, a SQLite file beside a SQLite store,
    else the backend's own database (MLflow's auth tables and migrations have names of their own)."""
    if given:
        return given
    if backend.startswith("sqlite:///"):
        return f"sqlite:///{Path(backend.removeprefix('sqlite:///')).with_name('basic_auth.db')}"
    return backend


def admin_password(auth: Auth) -> str | None:
    """The admin's first password: from --admin-password-file, else MLFLOW_AUTH_ADMIN_PASSWORD."""
    if auth.password_file:
        return _read_password_file(Path(auth.password_file))
    return os.environ.get(PASSWORD_ENV) or None


def _read_password_file(path: Path) -> str:
    """Its first line, from a small regular file (never a pipe or device that could hang us)."""
    try:
        info = path.stat()
    except OSError as err:
        raise PetlocError(f"--admin-password-file {path}: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise PetlocError(f"--admin-password-file {path}: not a regular file")
    if info.st_size > PASSWORD_FILE_MAX_BYTES:
        raise PetlocError(
            f"--admin-password-file {path}: over {PASSWORD_FILE_MAX_BYTES} bytes, not a password file"
        )
    with open(path, "rb") as file:
        text = file.read(PASSWORD_FILE_MAX_BYTES + 1).decode("utf-8", errors="replace")
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        raise PetlocError(f"--admin-password-file {path}: empty")
    return password


def write_config(database: str, default_permission: str) -> Path:
    """MLflow's basic_auth.ini for this server, readable by this user only (a database URI may
    hold a password); the caller removes it when the server stops."""
    admin = os.environ.get(USERNAME_ENV) or DEFAULT_ADMIN
    lines = [
        "[mlflow]",
        f"default_permission = {default_permission}",
        f"database_uri = {_ini_value(database)}",
        f"admin_username = {_ini_value(admin)}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
    ]
    handle, name = tempfile.mkstemp(prefix="petloc-auth-", suffix=".ini")  # 0600
    with os.fdopen(handle, "w") as file:
        file.write("\n".join(lines) + "\n")
    return Path(name)


def _ini_value(value: str) -> str:
    if any(ch in value for ch in "\r\n"):
        raise PetlocError(f"--auth-db: a line break in {value!r}")
    # configparser's interpolation: a URL-encoded password keeps its %
    return value.replace("%", "%%")


def config_file(backend: str, auth: Auth) -> tuple[Path, bool]:
    """MLflow's basic_auth.ini: the operator's own (MLFLOW_AUTH_CONFIG_PATH), else one petloc
    writes for this run of the server; the flag says whether petloc wrote it (and removes it)."""
    own = os.environ.get(CONFIG_ENV)
    if own:
        if auth.database or auth.default_permission != DEFAULT_PERMISSION:
            raise PetlocError(
                f"{CONFIG_ENV}={own} sets the auth database and default permission: "
                "leave out --auth-db and --default-permission"
            )
        if not Path(own).is_file():
            raise PetlocError(f"{CONFIG_ENV}={own}: no such file")
        return Path(own), False
    return write_config(auth_database(backend, auth.database), auth.default_permission), True


def bootstrap(config: Path, password: str | None):
    """Create the auth database's tables and its admin user now, so a missing or weak first
    password is one line here rather than a log in each web worker; returns MLflow's AuthConfig."""
    os.environ[CONFIG_ENV] = str(config)  # MLflow's auth module reads its configuration on import
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.config import read_auth_config

    with warnings.catch_warnings():  # Starlette's deprecation notes about MLflow's own code
        warnings.simplefilter("ignore")
        from mlflow.server import auth as mlflow_auth

    settings = read_auth_config()  # now, not the module's copy from its import
    admin = settings.admin_username or DEFAULT_ADMIN
    try:
        mlflow_auth.store.init_db(settings.database_uri)
        if not mlflow_auth.store.has_user(admin, use_primary=True) and not password:
            raise PetlocError(
                f"--auth: the admin user '{admin}' does not exist yet: give its first password in "
                f"{PASSWORD_ENV} or with --admin-password-file FILE"
            )
        mlflow_auth.create_admin_user(admin, password)
    except PetlocError:
        raise
    except MlflowException as err:
        # MLflow's advice names its configuration file, which petloc writes: name petloc's ways instead.
        reason = err.message.splitlines()[0].split(" Set ")[0]
        raise PetlocError(
            f"--auth: {reason} (the admin's first password: {PASSWORD_ENV} or --admin-password-file)"
        ) from None
    # The auth database through SQLAlchemy and its driver: unreachable, locked, not a database,
    # no driver installed; many types, all one line for the user.
    except Exception as err:  # noqa: BLE001  (see above)
        reason = first_line(getattr(err, "orig", None) or err)
        raise PetlocError(
            f"--auth-db {shown_uri(settings.database_uri)}: cannot open it ({reason})"
        ) from None
    return settings


def server_env(env: dict, config: Path) -> dict:
    """The web workers read the configuration; the admin exists already, so its password stays here."""
    env = {**env, CONFIG_ENV: str(config)}
    env.pop(PASSWORD_ENV, None)
    # MLflow's sign-up form needs one key for all workers; a new one each start only logs out
    # browsers mid-form.
    env.setdefault(SECRET_KEY_ENV, secrets.token_urlsafe(32))
    return env
