"""The base of the request models: list caps, strict integers, unknown and rejected fields, tagged
unions, the list screening before validation, and `parse_request`.

Policy (request_models.py and responses/request.py build on it):
  * a top-level `null` means "not given" (OpenAI's own spec marks these fields nullable);
  * unknown fields are accepted and ignored; non-null ones are listed in `request.ignored_fields`
    and logged once per request;
  * known fields we do not implement and that would change the output if ignored are a 400 naming
    the field (`REJECTED_COMMON`, `REJECTED_CHAT`, `REJECTED_COMPLETIONS`);
  * every validation failure maps to one error envelope whose `param` is the path of the offending
    field (`temperature`, `messages[2].content`, `stop[3]`): `parse_request` raises
    `errors.APIError`, `errors.validation_error_to_envelope` does the mapping.
"""
from __future__ import annotations

import json
import logging
from typing import Annotated, Any, ClassVar, Optional, TypeVar, Union

import orjson
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError,
                      model_validator)

from frontend.errors import APIError, ParamError, bad_request, bounded, validation_error_to_api_error

logger = logging.getLogger("frontend.request_models")   # its name before the module was split

MAX_STOP_SEQUENCES = 16
MAX_TOKENS_LIMIT = 1_000_000
# Caps on what a request may list (docs/API.md, "Limits"), each a 400 naming its field. They bound
# the work one request can ask of the event loop before anything else is known about it: validating
# 120,000 short messages (a 4.6 MB body, under the 8 MiB body limit) held the loop for 3-4 s.
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 4096            # text parts of all messages together
MAX_STOP_TOKEN_IDS = 256
UNSUPPORTED_PART_TYPES = ("image_url", "input_audio")


def _integral_float(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def strict_int(**bounds: int) -> Any:
    """A strict integer that also takes 2.0 (JSON Schema's "integer" does); bounds inside, so that
    they reach the JSON schema."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral_float)]


class OpenAIBaseModel(BaseModel):
    """Request-side model: unknown fields are kept (`model_extra`) and reported, never a 422.

    Strict types, as the schema says: `true` is not a number, `"1"` not a number, `1` not a boolean.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)

    def _ignored(self, prefix: str, out: list[str]) -> None:
        for key, value in (self.model_extra or {}).items():
            if value is not None:
                out.append(f"{prefix}.{key}" if prefix else key)
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            key = field.alias or name
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(value, OpenAIBaseModel):
                value._ignored(path, out)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, OpenAIBaseModel):
                        item._ignored(f"{path}[{i}]", out)


def _request_schema(schema: dict[str, Any], cls: type) -> None:
    """OpenAPI of a request: top-level fields with a non-null default also accept null (see
    `_screen_fields`), and the cross-field rules of `cls._schema_rules` are added as `allOf`."""
    for name, prop in schema.get("properties", {}).items():
        field = cls.model_fields.get(name)
        if field is None or field.is_required() or field.default is None:
            continue
        if "anyOf" not in prop or {"type": "null"} not in prop["anyOf"]:
            inner = {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
            schema["properties"][name] = {
                **{k: v for k, v in prop.items() if k in ("title", "description", "default")},
                "anyOf": [inner, {"type": "null"}]}
    if cls._schema_rules:
        schema["allOf"] = list(cls._schema_rules)


def when_set(field: str, then: dict[str, Any]) -> dict[str, Any]:
    """JSON-schema rule: when `field` is present and not null, the request must also match `then`."""
    return {"if": {"required": [field], "properties": {field: {"not": {"type": "null"}}}}, "then": then}


def must_be_true(field: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"const": True}}}


# Known fields that we do not implement and that would change the output if we ignored them: present
# with any value other than the listed no-op values -> 400 naming the field. Everything else that is
# unknown is ignored with a warning. `store`/`metadata` are deliberately absent: they ask OpenAI to keep
# the completion for later retrieval, which does not change this answer (and we have no retrieval
# endpoints, so nothing is promised); `user`-like fields (`safety_identifier`) are likewise ignored.
REJECTED_COMMON: dict[str, tuple[tuple[Any, ...], str]] = {
    # vLLM / TGI guided-decoding extensions: use response_format instead
    "guided_json": ((), "'guided_json' is not supported; use response_format {type: json_schema}."),
    "guided_regex": ((), "'guided_regex' is not supported; use response_format {type: regex}."),
    "guided_choice": ((), "'guided_choice' is not supported; use response_format."),
    "guided_grammar": ((), "'guided_grammar' is not supported; use response_format."),
    "structured_outputs": ((), "'structured_outputs' is not supported; use response_format."),
    # vLLM sampling extensions whose non-default values change the output
    "use_beam_search": ((False,), "beam search is not supported."),
    "include_stop_str_in_output": ((False,), "'include_stop_str_in_output' is not supported."),
    "skip_special_tokens": ((True,), "'skip_special_tokens: false' is not supported."),
    "bad_words": (([],), "'bad_words' is not supported."),
    "allowed_token_ids": (([],), "'allowed_token_ids' is not supported."),
    "truncate_prompt_tokens": ((), "'truncate_prompt_tokens' is not supported."),
    "prompt_logprobs": ((0,), "'prompt_logprobs' is not supported."),
    "guided_decoding_backend": ((), "'guided_decoding_backend' is not supported."),
}
REJECTED_CHAT: dict[str, tuple[tuple[Any, ...], str]] = {
    **REJECTED_COMMON,
    "functions": (([],), "legacy 'functions' are not supported; use 'tools'."),
    "function_call": (("none",), "legacy 'function_call' is not supported; use 'tool_choice'."),
    "audio": ((), "audio output is not supported."),
    "modalities": ((["text"],), "only the 'text' modality is supported."),
    "prediction": ((), "predicted outputs ('prediction') are not supported."),
    "web_search_options": ((), "web search is not supported."),
    "service_tier": (("auto", "default"), "only service_tier 'auto' or 'default' is supported."),
    "verbosity": (("medium",), "only verbosity 'medium' is supported."),
    "echo": ((False,), "'echo' is not supported on chat completions."),
    "chat_template": ((), "a per-request 'chat_template' is not supported."),
    "add_generation_prompt": ((True,), "'add_generation_prompt: false' is not supported."),
    "continue_final_message": ((False,), "'continue_final_message' is not supported."),
}
REJECTED_COMPLETIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    **REJECTED_COMMON,
    "suffix": (("",), "'suffix' (insertion) is not supported."),
}


class RequestBase(OpenAIBaseModel):
    """Top-level request: null == absent, rejected fields -> 400, ignored fields logged."""

    model_config = ConfigDict(json_schema_extra=_request_schema)
    _rejected: ClassVar[dict[str, tuple[tuple[Any, ...], str]]] = REJECTED_COMMON
    _schema_rules: ClassVar[tuple[dict[str, Any], ...]] = ()  # cross-field checks, for the OpenAPI document
    _ignored_fields: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _screen_fields(cls, data: Any, handler):
        if isinstance(data, dict):
            rejected = cls._rejected
            for key, value in data.items():
                spec = rejected.get(key)
                if spec is not None and value is not None and value not in spec[0]:
                    raise ParamError(spec[1], key, "unsupported_parameter")
            # null == absent; a rejected field with its no-op value is known, so not reported as ignored
            data = {k: v for k, v in data.items() if v is not None and k not in rejected}
        result = handler(data)
        ignored: list[str] = []
        result._ignored("", ignored)
        if ignored:
            result._ignored_fields = ignored
            # repr of the list: client-chosen names cannot forge log lines; each cut short, 20 at most
            logger.warning("%s: ignored %d unknown field(s): %r", cls.__name__, len(ignored),
                           [bounded(name) for name in ignored[:20]])
        return result

    @classmethod
    def screen_lists(cls, data: Any) -> None:
        """The list caps of this request, checked on the decoded body before validation; raises
        `APIError` (400 naming the field)."""
        screen_sizes(data)

    @property
    def ignored_fields(self) -> list[str]:
        """Paths of the non-null fields we did not recognise and ignored (e.g. `messages[0].foo`)."""
        return self._ignored_fields


# Union helpers. Every union is tagged by a callable so that pydantic puts a tag starting with "<" in
# error locations, which `_param_path` drops; the custom message names what was expected.

def tagged(choices: dict[str, Any], tag_of, error_type: str, message: str):
    members = tuple(Annotated[t, Tag(tag)] for tag, t in choices.items())
    return Annotated[Union[members], Discriminator(tag_of, custom_error_type=error_type,
                                                   custom_error_message=message)]


def by_key(key: str, mapping: dict[str, str]):
    def tag_of(v: Any) -> Optional[str]:
        value = v.get(key) if isinstance(v, dict) else getattr(v, key, None)
        return mapping.get(value) if isinstance(value, str) else None
    return tag_of


def str_or_list(v: Any) -> Optional[str]:
    if isinstance(v, str):
        return "<string>"
    if isinstance(v, (list, tuple)):
        return "<array>"
    return None


RequestT = TypeVar("RequestT", bound=RequestBase)


def too_long(param: str, cap: int, got: int) -> APIError:
    return bad_request(f"Invalid '{param}': array too long. Expected an array with maximum length {cap}, but got "
                       f"an array with length {got} instead.", param, "array_above_max_length")


def screen_items(items: Any, field: str, part_keys: tuple[str, ...], holder: str) -> None:
    """A list of items (chat messages, Responses input items) within MAX_MESSAGES, and their
    content parts (the lists under `part_keys` of every item, counted together) within
    MAX_CONTENT_PARTS: a 400 naming the item where the count passes the cap."""
    if not isinstance(items, list):
        return
    if len(items) > MAX_MESSAGES:
        raise too_long(field, MAX_MESSAGES, len(items))
    parts = 0
    for i, item in enumerate(items):
        for key in part_keys:
            value = item.get(key) if isinstance(item, dict) else None
            if isinstance(value, list):
                parts += len(value)
                if parts > MAX_CONTENT_PARTS:
                    raise bad_request(f"Invalid '{field}[{i}].{key}': {holder} hold more than "
                                      f"{MAX_CONTENT_PARTS} content parts in all.", f"{field}[{i}].{key}",
                                      "array_above_max_length")


def screen_sizes(data: Any) -> None:
    """The list caps, checked on the decoded body before validation: a refusal costs a length
    check, not the validation of every item (about 30 us per message)."""
    if not isinstance(data, dict):
        return
    screen_items(data.get("messages"), "messages", ("content",), "the messages")
    stop_ids = data.get("stop_token_ids")
    if isinstance(stop_ids, list) and len(stop_ids) > MAX_STOP_TOKEN_IDS:
        raise too_long("stop_token_ids", MAX_STOP_TOKEN_IDS, len(stop_ids))


def parse_request(cls: type[RequestT], body: Union[bytes, str, dict]) -> RequestT:
    """Validate a request body (raw JSON or an already-decoded object); raises `APIError` (400).

    Raw bytes go through pydantic's own JSON parser, which keeps integers exact (orjson turns
    integers beyond 64 bits into floats, which would let `seed: -2**63-1` through). orjson's
    decoding, about 25 ms per MB, only screens the list caps first; a body it cannot decode
    (such an integer) is screened by the stdlib parser, and invalid JSON is left to pydantic.
    """
    if isinstance(body, dict):
        cls.screen_lists(body)
    else:
        try:
            cls.screen_lists(orjson.loads(body))
        except orjson.JSONDecodeError:
            try:
                cls.screen_lists(json.loads(body))
            except (ValueError, RecursionError):
                pass
    try:
        if isinstance(body, dict):
            return cls.model_validate(body)
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error_to_api_error(exc) from None
