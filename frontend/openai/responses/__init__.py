"""OpenAI's Responses API (`/v1/responses`) over the chat path.

A Responses request is validated here (`request.py`, with its own field paths in errors), turned
into the `ChatCompletionRequest` it means (`chat_mapping.py`: instructions, input items and the
stored conversation before `previous_response_id` become messages; function tools, tool_choice,
text.format and reasoning become their chat fields), and run by the chat service itself
(templates, guides, tool and reasoning parsing, stop strings, usage, cancellation). `output.py`
turns the chat output's items into Response output items and the typed stream events;
`store.py` keeps stored responses (SQLite by default, PostgreSQL for clusters), each visible only
to the API key that created it; the HTTP side is frontend/http/responses_routes.py.
"""
