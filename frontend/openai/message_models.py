"""The parts of a chat request: messages and their content parts, tools and tool_choice,
response_format. Message order rules are not checked here (the templating step owns them).
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from frontend.errors import ParamError
from frontend.openai.request_base import OpenAIBaseModel, by_key, str_or_list, tagged


class ContentPartText(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIBaseModel):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ContentPartImage(OpenAIBaseModel):
    """Parsed so the error can name it; this deployment rejects it (text-only model)."""
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(OpenAIBaseModel):
    data: str
    format: Literal["wav", "mp3"] = "wav"


class ContentPartAudio(OpenAIBaseModel):
    """Parsed so the error can name it; this deployment rejects it (text-only model)."""
    type: Literal["input_audio"]
    input_audio: InputAudio


_PART_TAGS = {"text": "<text>", "image_url": "<image_url>", "input_audio": "<input_audio>"}
UserContentPart = tagged(
    {"<text>": ContentPartText, "<image_url>": ContentPartImage, "<input_audio>": ContentPartAudio},
    by_key("type", _PART_TAGS), "invalid_part_type",
    "content part 'type' must be one of 'text', 'image_url', 'input_audio'")
TextContentPart = tagged({"<text>": ContentPartText}, by_key("type", {"text": "<text>"}), "invalid_part_type",
                         "content part 'type' must be 'text' in this message")
_CONTENT_MSG = "content must be a string or an array of content parts"
UserContent = tagged({"<string>": str, "<array>": list[UserContentPart]}, str_or_list, "invalid_content",
                     _CONTENT_MSG)
TextContent = tagged({"<string>": str, "<array>": list[TextContentPart]}, str_or_list, "invalid_content",
                     _CONTENT_MSG)


def _text_of(content: Union[str, list, None]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, ContentPartText))


class _MessageBase(OpenAIBaseModel):
    cache_control: Optional[dict[str, Any]] = Field(None, description="Prompt-caching hint; accepted and ignored.")

    def text(self) -> str:
        """The message's text: the string content, or its text parts joined."""
        return _text_of(self.content)


class SystemMessage(_MessageBase):
    role: Literal["system", "developer"] = Field(description="'developer' is read as 'system'.")
    content: TextContent
    name: Optional[str] = None

    @field_validator("role", mode="before")
    @classmethod
    def _developer_is_system(cls, v: Any) -> Any:
        return "system" if v == "developer" else v


class UserMessage(_MessageBase):
    role: Literal["user"]
    content: UserContent
    name: Optional[str] = None


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: Annotated[str, WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "object"}]})] = Field(
        description="JSON text of the arguments (an object is accepted and re-encoded).")

    @field_validator("arguments", mode="before")
    @classmethod
    def _object_arguments(cls, v: Any) -> Any:
        # stdlib json: orjson refuses integers beyond 64 bits, which a client may well send
        return json.dumps(v, ensure_ascii=False, separators=(",", ":")) if isinstance(v, dict) else v


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_MessageBase):
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}}]})

    role: Literal["assistant"]
    content: Optional[TextContent] = None
    reasoning_content: Optional[str] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self):
        if self.content is None and not self.tool_calls:
            raise ParamError("an assistant message needs 'content' unless it has 'tool_calls'.", "content",
                             "missing_required_parameter")
        return self


class ToolMessage(_MessageBase):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


_ROLE_TAGS = {"system": "<system>", "developer": "<system>", "user": "<user>", "assistant": "<assistant>",
              "tool": "<tool>"}
ChatMessage = tagged(
    {"<system>": SystemMessage, "<user>": UserMessage, "<assistant>": AssistantMessage, "<tool>": ToolMessage},
    by_key("role", _ROLE_TAGS), "invalid_role",
    "message 'role' must be one of 'system', 'developer', 'user', 'assistant', 'tool'")


class FunctionDefinition(OpenAIBaseModel):
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="JSON schema of the arguments.")
    strict: Optional[bool] = None


class ChatTool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition
    cache_control: Optional[dict[str, Any]] = None


class ToolChoiceFunction(OpenAIBaseModel):
    name: str
    # The seed also allows the full tool definition here; the definition in `tools` is the one used.
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction
    cache_control: Optional[dict[str, Any]] = None


ToolChoice = tagged(
    {"<mode>": Literal["none", "auto", "required"], "<function>": NamedToolChoice},
    lambda v: "<mode>" if isinstance(v, str) else "<function>" if isinstance(v, (dict, NamedToolChoice)) else None,
    "invalid_tool_choice", "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}")


class TextResponseFormat(OpenAIBaseModel):
    type: Literal["text"]


class JsonObjectResponseFormat(OpenAIBaseModel):
    type: Literal["json_object"]


class JsonSchemaSpec(OpenAIBaseModel):
    name: str
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON schema the output must match.")
    strict: Optional[bool] = None
    description: Optional[str] = None


class JsonSchemaResponseFormat(OpenAIBaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class RegexResponseFormat(OpenAIBaseModel):
    type: Literal["regex"]
    regex: str = Field(description="Regular expression the whole output must match.")


_FORMAT_TAGS = {"text": "<text>", "json_object": "<json_object>", "json_schema": "<json_schema>", "regex": "<regex>"}
ResponseFormat = tagged(
    {"<text>": TextResponseFormat, "<json_object>": JsonObjectResponseFormat,
     "<json_schema>": JsonSchemaResponseFormat, "<regex>": RegexResponseFormat},
    by_key("type", _FORMAT_TAGS), "invalid_response_format",
    "response_format 'type' must be one of 'text', 'json_object', 'json_schema', 'regex'")
