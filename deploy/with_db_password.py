"""The entrypoint of compose.yaml's MLflow and Prefect servers: read the PostgreSQL password from the compose
secret and hand it to the server in its own environment, then run the server. The password so never
appears on a command line (`ps`), in compose.yaml, or in the container's configuration (`docker inspect`).

    python deploy/with_db_password.py mlflow server ...          # MLFLOW_BACKEND_STORE_URI gets the password
    python deploy/with_db_password.py prefect server start ...   # PREFECT_SERVER_DATABASE_PASSWORD is set

- POSTGRES_PASSWORD_FILE: where the password is (default /run/secrets/postgres_password, the secret).
- MLFLOW_BACKEND_STORE_URI, when set: a database URL without a password; the password is added to it.
- PREFECT_SERVER_DATABASE_HOST, when set: PREFECT_SERVER_DATABASE_PASSWORD is set too, and Prefect builds
  its connection URL from PREFECT_SERVER_DATABASE_{DRIVER,HOST,PORT,USER,NAME,PASSWORD}.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

SECRET = "/run/secrets/postgres_password"


def environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with the password from the secret file added where MLflow and Prefect read it."""
    path = Path(env.get("POSTGRES_PASSWORD_FILE", SECRET))
    try:
        password = path.read_text(encoding="utf-8").rstrip("\r\n")  # as the postgres image reads it
    except OSError as err:
        raise SystemExit(f"with_db_password: cannot read the database password: {err}") from None
    if not password:
        raise SystemExit(f"with_db_password: {path} is empty")
    env = dict(env)
    if env.get("MLFLOW_BACKEND_STORE_URI"):
        url = make_url(env["MLFLOW_BACKEND_STORE_URI"])
        if url.password is not None:
            raise SystemExit("with_db_password: MLFLOW_BACKEND_STORE_URI must not carry a password")
        env["MLFLOW_BACKEND_STORE_URI"] = url.set(password=password).render_as_string(hide_password=False)
    if env.get("PREFECT_SERVER_DATABASE_HOST"):
        env["PREFECT_SERVER_DATABASE_PASSWORD"] = password
    return env


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: with_db_password.py COMMAND [ARG...]")
    os.execvpe(argv[0], argv, environment(dict(os.environ)))


if __name__ == "__main__":
    main(sys.argv[1:])
