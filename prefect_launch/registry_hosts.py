"""Registry hosts that name where they are: an ECR host says its AWS account and region.

Shared by the aws environment (is the registry in its region?) and the ECR
registry (which account's registry to log in to).

Example:
    >>> ECR_HOST.match("123456789012.dkr.ecr.eu-west-1.amazonaws.com")["region"]
    'eu-west-1'
"""

from __future__ import annotations

import re

ECR_HOST = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
