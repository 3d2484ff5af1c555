"""The operator endpoints' wire shapes (vLLM's): POST /tokenize, POST /detokenize, GET /version.

operator_api.py validates requests and builds answers with them; openapi.py documents them. Kept
apart from the handlers so the document can import them without the aiohttp app.
"""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from frontend.openai import ChatCompletionRequest, RequestBase, ResponseModel, TokenId


class TokenizeChatRequest(ChatCompletionRequest):
    """`messages` (and tools, template settings...) as a chat request sends them, rendered as
    that request would be; its sampling fields are validated and otherwise unused."""
    return_token_strs: bool = Field(False, description="Also return each token's text.")


class TokenizePromptRequest(RequestBase):
    model: str
    prompt: str
    add_special_tokens: bool = Field(True, description="As /v1/completions encodes a prompt.")
    return_token_strs: bool = Field(False, description="Also return each token's text.")


class DetokenizeRequest(RequestBase):
    model: str
    tokens: list[TokenId]


class TokenizeResponse(ResponseModel):
    count: int
    max_model_len: Optional[int] = Field(description="The decoder's context length; null while it is down.")
    tokens: list[int]
    token_strs: Optional[list[str]]


class DetokenizeResponse(ResponseModel):
    prompt: str


class VersionResponse(ResponseModel):
    version: str
