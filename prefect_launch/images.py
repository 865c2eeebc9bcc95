"""Image references, parsed by the reference grammar of the OCI distribution spec, never pasted.

Every image reference that enters from outside (`-d`, `-B`, an accelerator
base image, the agent's base and kaniko images, `builder.destination`,
`registry.uri`) is parsed with docker-image-py, a port of distribution's own
`reference` package: a value that is not a reference (a newline and a `RUN`
line, `AS base`, a comment, a number) is refused naming its key, so nothing
from a user reaches a Dockerfile's `FROM` line or a command unparsed.

Example:
    >>> image_reference("tensorflow/tensorflow:latest-gpu", "base_image")
    'tensorflow/tensorflow:latest-gpu'
    >>> image_reference("ubuntu:22.04\\nRUN echo PROOF > /proof.txt", "-B/--base-image")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: -B/--base-image 'ubuntu:22.04\\nRUN echo PROOF > /proof.txt' is not an image reference (invalid reference format)
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator

from prefect_launch.errors import LaunchError


def _parsed(value: Any) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of `value`, or ValueError saying why it is not a reference."""
    from docker_image import reference

    if not isinstance(value, str):
        raise ValueError(f"a string, not {type(value).__name__}")
    try:
        parsed = reference.Reference.parse(value)
    except Exception as exc:  # the parser's own exception types, one per grammar rule
        raise ValueError(str(exc) or type(exc).__name__) from None
    if not parsed.get("name"):
        raise ValueError("it names no repository")
    return parsed["name"], parsed.get("tag"), parsed.get("digest")


def image_reference(value: Any, key: str) -> str:
    """`value` if it is an image reference (`[host[:port]/]path[:tag][@digest]`), else a LaunchError naming `key`."""
    try:
        _parsed(value)
    except ValueError as exc:
        raise LaunchError(f"{key} {value!r} is not an image reference ({exc})") from None
    return value


def repository_reference(value: Any, key: str) -> str:
    """`value` if it names a repository only: images pushed there are tagged by their content.

    >>> repository_reference("127.0.0.1:5000/launch:v1", "builder.destination")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: builder.destination '127.0.0.1:5000/launch:v1' names a tag (:v1); give the repository only (127.0.0.1:5000/launch): prefect-launch tags each image by its content
    """
    image_reference(value, key)
    name, tag, digest = _parsed(value)
    if tag or digest:
        what = f"a tag (:{tag})" if tag else f"a digest (@{digest})"
        raise LaunchError(f"{key} {value!r} names {what}; give the repository only ({name}): "
                          "prefect-launch tags each image by its content")
    return value


def _checked(value: Any) -> Any:
    try:
        _parsed(value)
    except ValueError as exc:
        raise ValueError(f"not an image reference ({exc})") from None
    return value


# A pydantic field holding an image reference: a bad one is refused with the field's path.
ImageReference = Annotated[str, BeforeValidator(_checked)]
