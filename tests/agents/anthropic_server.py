"""A scripted Anthropic Messages API server on loopback, for driving the REAL `claude` CLI offline.

The same turn logic as openai_server.py (stateless per request): a request that offers a `Bash` tool and
carries no `tool_result` yet is answered with one `Bash` tool call running `command`; any other request
(the tool's result, or a side request without tools) with `final_text`. Streaming requests get the Messages
API's server-sent events (message_start ... message_stop); others one JSON message. Point the CLI at it with
ANTHROPIC_BASE_URL=server.root_url and any ANTHROPIC_API_KEY.

    python3 anthropic_server.py [--hang] [--command CMD]   # stand-alone: prints the root URL, serves until killed
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openai_server import ScriptedServer, serve_main, sse  # noqa: E402


class AnthropicServer(ScriptedServer):
    """POST /v1/messages: a Bash tool_use, then a text answer."""

    def handles(self, path: str) -> bool:
        return path.endswith("/v1/messages")

    def has_tool_result(self, body: dict[str, Any]) -> bool:
        msgs = body.get("messages") or []
        last = msgs[-1] if msgs and isinstance(msgs[-1], dict) else {}
        content = last.get("content")
        return isinstance(content, list) and any(isinstance(c, dict) and c.get("type") == "tool_result"
                                                 for c in content)

    def blocks(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        tool = self.bash_tool(body)
        if tool is not None and not self.has_tool_result(body):
            return [{"type": "tool_use", "id": f"toolu_{len(self.requests)}", "name": tool,
                     "input": {"command": self.tool_command(body), "description": "write and commit a file"}}], \
                "tool_use"
        return [{"type": "text", "text": self.final_text}], "end_turn"

    def response(self, body: dict[str, Any], path: str) -> tuple[str, Iterator[bytes]]:
        blocks, stop = self.blocks(body)
        msg = {"id": f"msg_{len(self.requests)}", "type": "message", "role": "assistant",
               "model": str(body.get("model", "scripted")), "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": 10, "output_tokens": 1}}
        if not body.get("stream"):
            whole = json.dumps({**msg, "content": blocks, "stop_reason": stop}).encode()
            return "application/json", iter([whole])
        return "text/event-stream", self.events(msg, blocks, stop)

    def events(self, msg: dict[str, Any], blocks: list[dict[str, Any]], stop: str) -> Iterator[bytes]:
        yield sse({"type": "message_start", "message": {**msg, "content": []}}, "message_start")
        for i, b in enumerate(blocks):
            if b["type"] == "tool_use":
                start = {**b, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(b["input"])}
            else:
                start = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": b["text"]}
            yield sse({"type": "content_block_start", "index": i, "content_block": start}, "content_block_start")
            yield sse({"type": "content_block_delta", "index": i, "delta": delta}, "content_block_delta")
            yield sse({"type": "content_block_stop", "index": i}, "content_block_stop")
        yield sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                   "usage": {"output_tokens": 5}}, "message_delta")
        yield sse({"type": "message_stop"}, "message_stop")


if __name__ == "__main__":
    sys.exit(serve_main(AnthropicServer))
