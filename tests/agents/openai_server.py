"""A scripted OpenAI chat-completions server on loopback, for driving the REAL `pi` offline.

Standard library only. Stateless per request, so many sessions can share one server:

- a request whose last message is not a `role: tool` result is answered with ONE `bash` tool call running
  `command` (with `{ticket}` replaced by the ticket id found in the conversation, see TICKET_RE);
- a request that carries the tool's result (`role: tool`) is answered with `final_text`, and pi ends its turn;
- mode "hang": every request is read and recorded, then never answered (the connection stays open until
  the server stops), like a model that never replies.

Streaming only (pi always sends `"stream": true`): server-sent events of `chat.completion.chunk` objects,
`data: [DONE]` last. Port 0 picks a free port; `server.port` / `server.base_url` say which.

    with OpenAIServer(command="echo hi > f && git add f && git commit -qm f") as srv:
        ...  # pi's models.json: {"baseUrl": srv.base_url, "api": "openai-completions", ...}
        srv.requests  # every request body seen, in order

    python3 openai_server.py [--hang] [--command CMD]   # stand-alone: prints the base URL, serves until killed
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

# The ticket a conversation is about: tf's prompt is "/tf <ticket> ...", expanded or not by pi.
TICKET_RE = re.compile(r"/tf\s+([A-Za-z0-9][A-Za-z0-9_.-]*)")
DEFAULT_TEXT = "Done: the file is written and committed."


class ScriptedServer:
    """Threaded HTTP server on 127.0.0.1 with the turn logic; subclasses speak a wire protocol."""

    def __init__(self, command: str = "true", final_text: str = DEFAULT_TEXT, mode: str = "script") -> None:
        if mode not in ("script", "hang"):
            raise ValueError(f"mode {mode!r} is not 'script' or 'hang'")
        self.command, self.final_text, self.mode = command, final_text, mode
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        self._seen = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self) -> "ScriptedServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="scripted-model", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """True once n requests were received (an event, not a poll)."""
        with self._seen:
            return self._seen.wait_for(lambda: len(self.requests) >= n, timeout)

    # ------------------------------------------------------------------ turn logic
    def ticket_of(self, body: dict[str, Any]) -> str:
        m = TICKET_RE.search(json.dumps(body.get("messages", [])))
        return m.group(1) if m else ""

    def tool_command(self, body: dict[str, Any]) -> str:
        return self.command.replace("{ticket}", self.ticket_of(body))

    def has_tool_result(self, body: dict[str, Any]) -> bool:
        raise NotImplementedError

    def bash_tool(self, body: dict[str, Any]) -> str | None:
        """The name of the request's bash tool ("bash" for pi, "Bash" for claude); None if it offers none."""
        for tool in body.get("tools") or []:
            name = str(tool.get("name") or (tool.get("function") or {}).get("name") or "")
            if name.lower() == "bash":
                return name
        return None

    def response(self, body: dict[str, Any], path: str) -> tuple[str, Iterator[bytes]]:
        """Content type and the response body, chunk by chunk (each is written and flushed as it comes)."""
        raise NotImplementedError

    def handles(self, path: str) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------------ HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests print what matters
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.paths.append(f"GET {self.path}")
                self._plain(404, b'{"error": {"message": "not scripted"}}')

            def do_HEAD(self) -> None:
                self._plain(200, b"")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"unparsed": raw.decode(errors="replace")}
                path = self.path.split("?", 1)[0]
                with server._seen:
                    server.paths.append(f"POST {path}")
                    if server.handles(path):
                        server.requests.append(body)
                    server._seen.notify_all()
                if not server.handles(path):
                    self._plain(404, b'{"error": {"type": "not_found", "message": "not scripted"}}')
                    return
                if server.mode == "hang":
                    server._stop.wait()  # never answer; the client sees a silent open connection
                    self.close_connection = True
                    return
                ctype, chunks = server.response(body, path)
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for chunk in chunks:
                        self.wfile.write(chunk)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _plain(self, code: int, data: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def sse(obj: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj)}\n\n".encode()


class OpenAIServer(ScriptedServer):
    """POST /v1/chat/completions, streaming, with a `bash` tool call then a text answer."""

    def handles(self, path: str) -> bool:
        return path.endswith("/chat/completions")

    def has_tool_result(self, body: dict[str, Any]) -> bool:
        msgs = body.get("messages") or []
        return bool(msgs) and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "tool"

    def response(self, body: dict[str, Any], path: str) -> tuple[str, Iterator[bytes]]:
        return "text/event-stream", self.events(body)

    def events(self, body: dict[str, Any]) -> Iterator[bytes]:
        model = str(body.get("model", "scripted"))
        n = len(self.requests)
        base = {"id": f"chatcmpl-{n}", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        tool = self.bash_tool(body)
        if self.has_tool_result(body) or tool is None:
            yield chunk({"role": "assistant", "content": ""})
            yield chunk({"content": self.final_text})
            yield chunk({}, "stop")
        else:
            args = json.dumps({"command": self.tool_command(body)})
            yield chunk({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": f"call_{n}", "type": "function", "function": {"name": tool, "arguments": ""}}]})
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": args}}]})
            yield chunk({}, "tool_calls")
        yield sse({**base, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"


def serve_main(cls: type[ScriptedServer], argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(cls.__doc__ or "").split("\n")[0])
    ap.add_argument("--hang", action="store_true", help="read requests, never answer")
    ap.add_argument("--command", default="true", help="the command of the scripted tool call")
    ap.add_argument("--text", default=DEFAULT_TEXT, help="the final answer")
    a = ap.parse_args(argv)
    srv = cls(command=a.command, final_text=a.text, mode="hang" if a.hang else "script")
    print(srv.base_url, flush=True)
    srv.start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(serve_main(OpenAIServer))
