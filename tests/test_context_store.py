"""Kaniko build contexts reach each cloud's object store with that cloud's own client and credentials.

S3 is covered end to end in `test_kaniko.py` (moto). Here google-cloud-storage
and azure-storage-blob upload to HTTP stand-ins (`storage_standin.py`) that
accept only the token each environment's credential chain obtains: a service
account's JWT exchange at the Vertex stand-in for GCS, managed identity for Azure.
"""

from __future__ import annotations

import gzip

import pytest

from prefect_launch.builders.context_store import upload
from prefect_launch.environments import AwsEnvironment, AzureEnvironment, GcpEnvironment
from prefect_launch.errors import LaunchError
from storage_standin import ObjectStoreStandIn
from vertex_standin import VertexStandIn

CONTEXT = b"a build context tar" * 100


@pytest.fixture
def store(tmp_path, monkeypatch):
    with VertexStandIn() as vertex, ObjectStoreStandIn(tmp_path, gcs_token=vertex.access_token) as store:
        for name, value in {"GOOGLE_APPLICATION_CREDENTIALS": vertex.credentials_file(tmp_path),
                            "STORAGE_EMULATOR_HOST": store.url, "REQUESTS_CA_BUNDLE": str(store.cert),
                            "SSL_CERT_FILE": str(store.cert), "IDENTITY_ENDPOINT": store.identity_endpoint,
                            "IDENTITY_HEADER": store.identity_header}.items():
            monkeypatch.setenv(name, value)
        yield store


def test_gcs_context_upload_with_the_gcp_environment(store):
    url = upload("gs://launch-contexts/builds/", "3f2a", CONTEXT, GcpEnvironment(region="us-central1", project="p"))
    assert url == "gs://launch-contexts/builds/3f2a.tar.gz"
    assert gzip.decompress(store.objects["gs", "launch-contexts", "builds/3f2a.tar.gz"]) == CONTEXT


def test_azure_blob_context_upload_with_managed_identity(store):
    container = f"{store.url}/launchacct/contexts"  # path-style account URL, as for an emulator
    url = upload(container, "3f2a", CONTEXT, AzureEnvironment())
    assert url == f"{container}/3f2a.tar.gz"
    assert gzip.decompress(store.objects["azure", "launchacct/contexts", "3f2a.tar.gz"]) == CONTEXT
    assert any("storage.azure.com" in path for path in store.identity_requests)  # the Blob scope, not management


def test_a_store_without_its_environment_or_unreachable_is_a_clear_error(store):
    with pytest.raises(LaunchError, match=r"needs `environment: type: gcp`"):
        upload("gs://launch-contexts/builds", "3f2a", CONTEXT, AwsEnvironment(region="us-east-1"))
    with pytest.raises(LaunchError, match=r"use s3://bucket/path, gs://bucket/path"):
        upload("ftp://host/builds", "3f2a", CONTEXT, None)
    store.gcs_token = "a-token-nobody-has"  # the store now refuses the agent's token
    with pytest.raises(LaunchError, match=r"could not upload the build context to gs://other-bucket/3f2a.tar.gz"):
        upload("gs://other-bucket", "3f2a", CONTEXT, GcpEnvironment(region="us-central1", project="p"))
