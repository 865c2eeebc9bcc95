"""Queue config templates: `{{ name }}` fields an admin lets users fill in.

A template field has a type, a default and bounds. They become the work pool's
`variables` JSON Schema (with `additionalProperties: false`), which the Prefect
server enforces on every run; `check_values` runs the very same validator so
`--dry-run` refuses what the server would refuse, with the same message.

Example:
    >>> fields = parse_templates({"gpus": {"type": "integer", "default": 1, "maximum": 4}})
    >>> schema = variables_schema(fields)
    >>> check_values(schema, coerce_values(schema, {"gpus": "2"}))
    {'gpus': 2}
    >>> apply_template({"gpus": "{{ gpus }}"}, {"gpus": 2})
    {'gpus': 2}
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from prefect.utilities.templating import PLACEHOLDER_CAPTURE_REGEX, apply_values
from pydantic import BaseModel, ConfigDict, model_validator

from prefect_launch.errors import LaunchError


class TemplateError(LaunchError):
    """A template definition or value that cannot be used."""


# The variable Prefect's `flow.deploy(image=...)` looks for in a pool's schema (it refuses a pool without one) and
# sets in the deployment's job variables: the image a deployed flow's runs use (`deployments.flows`). Queues whose
# target runs images declare it, optional and without a default; it is no template field, and none may take its name.
IMAGE_VARIABLE = "image"


class TemplateField(BaseModel):
    """One `{{ name }}` field of a queue config."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["string", "integer", "number"] = "string"
    default: str | int | float | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    enum: list[str | int | float] | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _bounds_fit_type(self) -> "TemplateField":
        if self.type == "string" and (self.minimum is not None or self.maximum is not None):
            raise ValueError("minimum/maximum apply to integer and number fields only")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is greater than maximum {self.maximum}")
        return self


def parse_templates(raw: dict[str, Any] | None) -> dict[str, TemplateField]:
    """Validate a `--templates` document: name -> field definition."""
    fields: dict[str, TemplateField] = {}
    for name, definition in (raw or {}).items():
        if not str(name).isidentifier():
            raise TemplateError(f"template field {name!r}: name must be a Python identifier")
        if name == IMAGE_VARIABLE:
            raise TemplateError(f"template field {name!r}: the name of the variable Prefect's flow.deploy(image=...) "
                                "sets (the image of a deployed flow's runs); name the field otherwise")
        try:
            fields[name] = TemplateField.model_validate(definition or {})
        except ValueError as exc:
            raise TemplateError(f"template field {name!r}: {_first_error(exc)}") from None
    return fields


def variables_schema(fields: dict[str, TemplateField], image: bool = False) -> dict[str, Any]:
    """The work pool `variables` schema for these fields, with the optional `image` variable if `image`.

    >>> variables_schema({}, image=True)["properties"]["image"]["type"]
    'string'
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in fields.items():
        prop: dict[str, Any] = {"type": field.type, "title": name}
        for key in ("default", "minimum", "maximum", "enum", "description"):
            value = getattr(field, key)
            if value is not None:
                prop[key] = value
        properties[name] = prop
        if field.default is None:
            required.append(name)
    if image:
        properties[IMAGE_VARIABLE] = {
            "type": "string", "title": IMAGE_VARIABLE,
            "description": "The image a deployed flow's runs use, with prefect and the flow's code (flow.deploy(image=...) "
                           "sets it); a launch job names its image in its spec",
        }
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


# `{{ prefect.blocks.TYPE.NAME }}` and `{{ prefect.variables.NAME }}`: Prefect's own references, which the agent
# resolves in the queue config (Secret blocks, variables); not template fields.
PREFECT_REFERENCE = "prefect."


def templates_of(schema: dict[str, Any]) -> dict[str, TemplateField]:
    """The template fields a pool's `variables` schema declares (the inverse of `variables_schema`); a property
    that is no template field (a Prefect default template's `env`, say, or `image`) is left out.

    >>> templates_of(variables_schema(parse_templates({"gpus": {"type": "integer", "default": 1, "maximum": 4}})))
    {'gpus': TemplateField(type='integer', default=1, minimum=None, maximum=4, enum=None, description=None)}
    """
    fields = {}
    for name, prop in (schema.get("properties") or {}).items():
        if name == IMAGE_VARIABLE:
            continue
        try:
            fields[name] = TemplateField.model_validate({key: value for key, value in prop.items() if key != "title"})
        except ValueError:
            continue
    return fields


def placeholders(template: Any) -> set[str]:
    """Names of every `{{ name }}` field used in a config (Prefect's own `{{ prefect.* }}` references are none)."""
    if isinstance(template, dict):
        return set().union(*(placeholders(v) for v in template.values())) if template else set()
    if isinstance(template, list):
        return set().union(*(placeholders(v) for v in template)) if template else set()
    if isinstance(template, str):
        return {name for _, name in PLACEHOLDER_CAPTURE_REGEX.findall(template) if not name.startswith(PREFECT_REFERENCE)}
    return set()


def check_placeholders_declared(config: Any, fields: dict[str, TemplateField]) -> None:
    """Every `{{ name }}` in a queue config must be a declared template field."""
    missing = sorted(placeholders(config) - set(fields))
    if missing:
        raise TemplateError(
            f"queue config uses template field(s) {', '.join(missing)} "
            "that --templates does not declare"
        )


def coerce_values(schema: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Turn `-v name=value` strings into the field's declared type (a launch spec's `template_variables`
    are typed already, and kept as they are for the server's schema to check)."""
    properties = schema.get("properties", {})
    values: dict[str, Any] = {}
    for name, text in raw.items():
        if not isinstance(text, str):
            values[name] = text
            continue
        kind = properties.get(name, {}).get("type", "string")
        try:
            values[name] = {"integer": int, "number": float}.get(kind, str)(text)
        except ValueError:
            raise TemplateError(
                f"Validation failed for field {name!r}. Failure reason: {text!r} is not of type {kind!r}"
            ) from None
    return values


def check_no_templates(values: dict[str, Any]) -> None:
    """Refuse template values (a job's, its submitter's) that hold a `{{ ... }}` reference: a job's values are
    data, and Prefect's template machinery would resolve a `{{ prefect.blocks.secret.NAME }}` in them.

    >>> check_no_templates({"tag": "{{ prefect.blocks.secret.db-password }}"})
    Traceback (most recent call last):
    ...
    prefect_launch.templates.TemplateError: template value tag holds '{{ prefect.blocks.secret.db-password }}': a job's values are data, never templates; only the queue's config may read Prefect blocks and variables
    """
    for name, value in values.items():
        found = _placeholder_matches(value)
        if found:
            raise TemplateError(f"template value {name} holds {found[0][0]!r}: a job's values are data, never "
                                "templates; only the queue's config may read Prefect blocks and variables")


def check_no_image(values: dict[str, Any]) -> None:
    """Refuse a launch job's value for `image`, a deployed flow's variable (its runs are handed over with the image as
    their source): never silently ignored.

    >>> check_no_image({"image": "trainer:1"})
    Traceback (most recent call last):
    ...
    prefect_launch.templates.TemplateError: template value image is the image of a deployed flow's runs (flow.deploy(image=...)); a launch job names its image in its spec (-d/--docker-image)
    """
    if values.get(IMAGE_VARIABLE) is not None:
        raise TemplateError(f"template value {IMAGE_VARIABLE} is the image of a deployed flow's runs "
                            "(flow.deploy(image=...)); a launch job names its image in its spec (-d/--docker-image)")


def _placeholder_matches(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [match for item in value.values() for match in _placeholder_matches(item)]
    if isinstance(value, list):
        return [match for item in value for match in _placeholder_matches(item)]
    return PLACEHOLDER_CAPTURE_REGEX.findall(value) if isinstance(value, str) else []


def check_values(schema: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Validate values exactly as the Prefect server does; return them with defaults."""
    # Imported here: Prefect's schema tools pull in SQLAlchemy (0.3 s of every agent's start).
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    try:
        validate(
            values,
            schema,
            raise_on_error=True,
            preprocess=True,
            ignore_required=False,
            allow_none_with_default=True,
        )
    except ValidationError as exc:
        raise TemplateError(str(exc)) from None
    defaults = {
        name: prop["default"]
        for name, prop in schema.get("properties", {}).items()
        if "default" in prop
    }
    return {**defaults, **defaulted_nulls(schema, values)}


def defaulted_nulls(schema: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`values` without the nulls of fields that have a default: the server accepts null as "use the
    default" (a cleared field in the Prefect UI sends one), so the default is what the job gets.

    >>> defaulted_nulls({"properties": {"gpus": {"type": "integer", "default": 1}}}, {"gpus": None})
    {}
    """
    properties = schema.get("properties", {})
    return {name: value for name, value in values.items()
            if not (value is None and "default" in properties.get(name, {}))}


def stand_in_values(fields: dict[str, TemplateField]) -> dict[str, Any]:
    """A value of each field's declared type (its default, else its first allowed value or its bound), to check
    a queue config before any job fills its fields.

    >>> stand_in_values(parse_templates({"gpus": {"type": "integer", "minimum": 1}, "size": {"enum": ["s", "l"]}}))
    {'gpus': 1, 'size': 's'}
    """
    samples = {"string": "stand-in", "integer": 0, "number": 0.0}
    values = {}
    for name, field in fields.items():
        candidates = [field.default, *(field.enum or [])[:1], field.minimum, field.maximum, samples[field.type]]
        values[name] = next(value for value in candidates if value is not None)
    return values


def apply_template(config: Any, values: dict[str, Any]) -> Any:
    """Fill `{{ name }}` fields; a field that is the whole string keeps the value's type."""
    return apply_values(copy.deepcopy(config), values)


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"{where}: {first['msg']}" if where else first["msg"]
    return str(exc)
