"""The aws environment: boto3's default credential chain, or an `AwsCredentials` block.

`region` is required, as W&B requires it; ECR registries must lie in it.
`AWS_ENDPOINT_URL` (boto3's own setting) points every client at a stand-in
such as moto.

Example:
    >>> env = AwsEnvironment(region="us-east-1")
    >>> env.registry_problems("123456789012.dkr.ecr.eu-west-1.amazonaws.com/launch")
    ['the ECR registry 123456789012.dkr.ecr.eu-west-1.amazonaws.com is in eu-west-1 but environment.region is us-east-1']
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment
from prefect_launch.registry_hosts import ECR_HOST


class AwsEnvironment(Environment):
    type = "aws"

    def __init__(self, region: str | None = None, project: str | None = None, credentials: str | None = None):
        if not region:
            raise LaunchError("environment.type aws needs environment.region (the AWS region the agent works in)")
        super().__init__(region, project, credentials)
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    @functools.cached_property
    def session(self):
        import boto3

        if self.credentials_block:
            from prefect_aws import AwsCredentials

            # Clients still take environment.region, whatever region the block names.
            return AwsCredentials.load(self.credentials_block.split("/", 1)[-1]).get_boto3_session()
        return boto3.Session(region_name=self.region)

    def client(self, service: str) -> Any:
        """The agent's one client for `service`, shared by its runs: boto3's clients are thread-safe (making one
        is not), and each costs over a megabyte; a client per run made 200 SageMaker runs 1.4 MB each."""
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = self.session.client(service, region_name=self.region)
            return self._clients[service]

    @functools.cached_property
    def account_id(self) -> str:
        return self.client("sts").get_caller_identity()["Account"]

    @property
    def known_account_id(self) -> str | None:
        """The account id if `verify` (or `account_id`) has looked it up; no I/O."""
        return self.__dict__.get("account_id")

    def verify(self) -> str:
        try:
            return f"AWS account {self.account_id}, region {self.region}"
        except Exception as exc:
            raise LaunchError(f"aws environment: cannot reach AWS with the configured credentials: {exc}") from None

    def registry_problems(self, repository: str) -> list[str]:
        registry_host = repository.split("/", 1)[0]
        match = ECR_HOST.match(registry_host)
        if match and match["region"] != self.region:
            return [f"the ECR registry {registry_host} is in {match['region']} but environment.region is {self.region}"]
        return []
