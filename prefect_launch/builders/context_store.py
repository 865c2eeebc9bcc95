"""Build-context stores: where an in-cluster builder (kaniko, BuildKit) leaves a build's context for its pod.

`builder.build-context-store` is a bucket URL, as in W&B's agent configs:

- `s3://bucket/prefix` (boto3, the aws environment's credentials);
- `gs://bucket/prefix` (google-cloud-storage, the gcp environment's credentials);
- `https://<account>.blob.core.windows.net/<container>` (azure-storage-blob,
  `DefaultAzureCredential`).

The context is a gzipped tar (what Kaniko reads from a bucket) named by the
image tag, so the same source is stored once, whichever agent builds it. A
builder that cannot read a bucket (BuildKit) fetches it over a presigned
HTTPS URL that expires with the build (`presigned_url`; S3 stores).

Example:
    >>> context_url("s3://launch-builds/contexts/", "3f2a")
    's3://launch-builds/contexts/3f2a.tar.gz'
    >>> context_url("https://acct.blob.core.windows.net/builds", "3f2a")
    'https://acct.blob.core.windows.net/builds/3f2a.tar.gz'
"""

from __future__ import annotations

import gzip
from urllib.parse import urlsplit

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment

# store URL scheme -> the `type` of the environment whose credentials write to it
_SCHEMES = {"s3": "aws", "gs": "gcp", "https": "azure"}


def context_url(store: str, tag: str) -> str:
    return f"{store.rstrip('/')}/{tag}.tar.gz"


def check_store(store: str | None, environment: Environment | None) -> str:
    """The store URL if the agent can write to it with its environment; a clear refusal otherwise."""
    if not store:
        raise LaunchError("the kaniko builder needs builder.build-context-store (s3://, gs:// or an Azure Blob container URL)")
    scheme = urlsplit(store).scheme
    needs = _SCHEMES.get(scheme)
    if needs is None:
        raise LaunchError(f"builder.build-context-store {store!r}: use s3://bucket/path, gs://bucket/path "
                          "or https://<account>.blob.core.windows.net/<container>")
    if environment is None or environment.type != needs:
        raise LaunchError(f"builder.build-context-store {store!r} needs `environment: type: {needs}` "
                          "in the agent config for its credentials")
    return store


def upload(store: str, tag: str, context: bytes, environment: Environment | None) -> str:
    """Store a build context (an uncompressed tar) gzipped; return the URL Kaniko reads it from."""
    check_store(store, environment)
    url = context_url(store, tag)
    data = gzip.compress(context, mtime=0)
    parts = urlsplit(url)
    try:
        if parts.scheme == "s3":
            environment.client("s3").put_object(Bucket=parts.netloc, Key=parts.path.lstrip("/"), Body=data)
        elif parts.scheme == "gs":
            from google.cloud import storage

            client = storage.Client(project=environment.project, credentials=environment.credentials)
            client.bucket(parts.netloc).blob(parts.path.lstrip("/")).upload_from_string(data)
        else:
            from azure.storage.blob import BlobClient

            BlobClient.from_blob_url(url, credential=environment.credential).upload_blob(data, overwrite=True)
    except Exception as exc:
        raise LaunchError(f"could not upload the build context to {url}: {exc.__class__.__name__}: {exc}") from None
    return url


def presigned_url(url: str, environment: Environment | None, seconds: int) -> str:
    """A URL anyone may GET `url` (a stored context) from for `seconds`, signed with the environment's credentials."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise LaunchError(f"the buildkit builder fetches its context over a presigned URL, made for s3:// stores "
                          f"only so far; {url} is not one: use an s3:// build-context-store, or the kaniko builder")
    return environment.client("s3").generate_presigned_url(
        "get_object", Params={"Bucket": parts.netloc, "Key": parts.path.lstrip("/")}, ExpiresIn=seconds)
