"""The scaled-out topology's files parse and agree with the code (Docker and Kubernetes do not run here)."""

from __future__ import annotations

import importlib

import yaml

from tests.conftest import REPO
from tasks.config import load_params

INFRA = REPO / "infra"


def test_prefect_yaml_declares_both_deployments_with_importable_flows():
    doc = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in doc["deployments"]}
    assert set(deployments) == {"pipeline", "retrain"}
    for d in deployments.values():
        path, _, attr = d["entrypoint"].partition(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(module, attr), "to_deployment"), d["entrypoint"]  # a Prefect flow
        assert d["work_pool"]["name"] == "sslpipe-process"
    cron = deployments["retrain"]["schedules"][0]["cron"]
    assert cron == load_params(REPO / "params.yaml").retrain.cron  # one schedule, two places
    assert deployments["pipeline"]["schedules"] == []


def test_compose_has_the_scaled_out_services():
    doc = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
    services = doc["services"]
    for name in ("postgres", "minio", "prefect-server", "prefect-worker", "mlflow", "ray-head", "ray-worker"):
        assert name in services, name
    assert "postgresql" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    mlflow = " ".join(services["mlflow"]["command"].split())
    # psycopg 3, named: SQLAlchemy 2.0 took psycopg2 for a bare postgresql://, 2.1 takes psycopg 3
    assert "'psycopg[binary]" in mlflow and "--backend-store-uri postgresql+psycopg://" in mlflow
    assert "--artifacts-destination s3://" in mlflow and "--allowed-hosts 'mlflow:5000," in mlflow
    worker_env = services["prefect-worker"]["environment"]
    assert worker_env["PREFECT_API_URL"].startswith("http://prefect-server")
    assert worker_env["MLFLOW_TRACKING_URI"].startswith("http://mlflow")
    assert worker_env["RAY_ADDRESS"].startswith("ray://ray-head")
    assert "infra/prefect.yaml" in services["prefect-worker"]["command"]


def test_k8s_manifests_parse_with_a_raycluster_and_a_worker():
    docs = [d for f in sorted((INFRA / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    assert ("ray.io/v1", "RayCluster") in kinds
    assert ("apps/v1", "Deployment") in kinds
    for d in docs:
        assert d["metadata"]["name"]
    ray = next(d for d in docs if d["kind"] == "RayCluster")
    assert ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"]
    worker = next(d for d in docs if d["kind"] == "Deployment")
    args = " ".join(worker["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "prefect worker start --pool sslpipe-process" in args
