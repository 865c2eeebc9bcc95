# The prefect-launch agent's image: what the Helm chart's `agent.image` runs.
#
#   docker build -f infra/images/agent.Dockerfile -t prefect-launch/agent:latest .
#
# It holds the agent with every cloud and Kubernetes extra, git for git jobs, and runs as
# uid 1000 (the chart sets runAsNonRoot). It has no Docker engine: in a cluster, builds use
# the kaniko builder. BASE_IMAGE may be any Debian-based image with python3.11 and pip.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY prefect_launch /src/prefect_launch
RUN python3 -m pip install --no-cache-dir "/src[aws,gcp,azure,kubernetes]" && rm -rf /src
RUN useradd --uid 1000 --create-home launch
USER 1000
ENV HOME=/home/launch PREFECT_HOME=/home/launch/.prefect
ENTRYPOINT ["prefect-launch"]
CMD ["agent"]
