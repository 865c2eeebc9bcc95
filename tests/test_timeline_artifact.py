"""A run's live timeline artifact (prefect_launch/flows/timeline_artifact.py), written to the test server:
stage changes within a second make one write, a stage that lasts is on record within about a second."""

from __future__ import annotations

import logging
import time

from prefect import flow
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from conftest import _client, _pause, unique

from prefect_launch.flows.timeline_artifact import TIMELINE_PUBLISH_SECONDS, TimelineArtifact
from prefect_launch.timeline import Timeline


@flow(name="timeline-artifact-test")
def _owner() -> None:
    """Only the flow the test runs' artifacts belong to; never called."""


class CountedWrites:
    """The test server's client, its artifact writes counted."""

    def __init__(self) -> None:
        self.client = _client()
        self.writes: list[str] = []

    def create_artifact(self, artifact):
        self.writes.append("create")
        return self.client.create_artifact(artifact)

    def update_artifact(self, artifact_id, update):
        self.writes.append("update")
        return self.client.update_artifact(artifact_id, update)


def published(key: str) -> list | None:
    artifacts = _client().read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return artifacts[0].data if artifacts else None


def new_timeline() -> tuple[Timeline, TimelineArtifact, CountedWrites]:
    writes = CountedWrites()
    flow_run = _client().create_flow_run(_owner, name=unique("timeline"))
    artifact = TimelineArtifact(unique("run").lower(), flow_run.id, writes, logging.getLogger("test"))
    return Timeline(publish=artifact), artifact, writes


def test_stages_that_follow_each_other_within_a_second_are_one_write_as_the_run_ends():
    timeline, artifact, writes = new_timeline()
    for stage in ("queue wait", "resolve", "build", "push", "submit", "start"):
        timeline.begin(stage)
    timeline.started()
    timeline.end()
    artifact.flush()
    assert writes.writes == ["create"]
    assert published(artifact.key) == timeline.rows()
    assert [row["stage"] for row in published(artifact.key)][-1] == "run"


def test_a_stage_that_lasts_is_on_record_while_it_lasts_then_updated_in_place():
    timeline, artifact, writes = new_timeline()
    timeline.begin("build")
    deadline = time.monotonic() + TIMELINE_PUBLISH_SECONDS + 10
    for looks in range(1000):
        if published(artifact.key) is not None:
            break
        assert time.monotonic() < deadline, "the build stage was not published while it lasted"
        _pause(looks)
    assert [row["stage"] for row in published(artifact.key)] == ["build"]
    timeline.begin("push")
    timeline.end()
    artifact.flush()
    assert writes.writes == ["create", "update"]
    assert published(artifact.key) == timeline.rows()
