"""What a client reassembles from a tool parser's streamed deltas (tests/unit/test_tools.py and
test_parsers.py): each delta's shape is checked on the way, and the non-streamed message must say
the same as the stream."""
from __future__ import annotations


def reassemble(items, parser) -> tuple[str, list[dict]]:
    """(content, [{"id", "name", "arguments"}]) from the parser's `(kind, value)` items."""
    content = "".join(v for k, v in items if k == "content")
    calls: dict[int, dict] = {}
    for kind, value in items:
        if kind != "tool_calls":
            continue
        for delta in value:
            call = calls.get(delta["index"])
            if call is None:
                # the first delta of a call: index, id, type, name and arguments ""
                assert set(delta) == {"index", "id", "type", "function"}, delta
                assert delta["type"] == "function" and delta["id"].startswith("call_")
                assert delta["function"]["arguments"] == "" and delta["function"]["name"]
                calls[delta["index"]] = {"id": delta["id"], "name": delta["function"]["name"], "arguments": ""}
            else:
                # later deltas: index and an arguments fragment only
                assert set(delta) == {"index", "function"} and set(delta["function"]) == {"arguments"}, delta
                assert delta["function"]["arguments"]
                call["arguments"] += delta["function"]["arguments"]
    streamed = [calls[i] for i in sorted(calls)]
    assert sorted(calls) == list(range(len(calls)))
    message = [{"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
               for c in parser.message_calls()]
    assert streamed == message          # stream and non-stream agree
    return content, message
