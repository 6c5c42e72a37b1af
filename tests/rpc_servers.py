"""Fake blockchain JSON-RPC nodes for reconciliation tests, run as a process.

    python tests/rpc_servers.py {evm|xrpl} STATE.json [--port N]

Listens on 127.0.0.1 (port 0 picks a free one) and prints ``READY <port>`` on
stdout once it accepts connections. State file shapes (amounts as decimal
strings, addresses compared case-insensitively for EVM):

    evm:  {"eth": {address: amount}, "erc20": {contract: {address: amount}},
           "errors": [address, ...]}       # calls about these get a JSON-RPC error
    xrpl: {"accounts": {address: drops}, "errors": [address, ...]}

The EVM node answers JSON-RPC 2.0 single and batch (array) requests, in
reverse order for batches so clients must match by id. The XRPL node answers
rippled-style ``{"method", "params": [{...}]}`` requests and rippled's
``{"method": "batch", "params": [{"method", "id", ...fields}, ...]}``. Both
also answer:

    test_setState     [state]         replace the state
    test_stats        -> {"httpRequests": n, "calls": n}
    test_failNext     [n, status]     answer the next n requests with HTTP status
                                      (default 503)
    test_garbageNext  [n]             answer the next n requests with non-JSON

Control calls are neither counted nor failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BALANCE_OF = "0x70a08231"


class NodeState:
    """Shared, lock-protected state of one fake node."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.lock = threading.Lock()
        self.state = state
        self.evm = _lowercased(state)
        self.http_requests = 0
        self.calls = 0
        self.fail_next = 0
        self.fail_status = 503
        self.garbage_next = 0

    def control(self, method: str, params: Any) -> Any:
        with self.lock:
            if method == "test_setState":
                self.state = params[0]
                self.evm = _lowercased(self.state)
                return True
            if method == "test_failNext":
                self.fail_next = int(params[0])
                self.fail_status = int(params[1]) if len(params) > 1 else 503
                return True
            if method == "test_garbageNext":
                self.garbage_next = int(params[0])
                return True
            return {"httpRequests": self.http_requests, "calls": self.calls}


def _lowercased(state: dict[str, Any]) -> dict[str, Any]:
    """EVM state with every address lowercased, so lookups ignore EIP-55 case."""
    return {
        "eth": {k.lower(): v for k, v in state.get("eth", {}).items()},
        "erc20": {
            token.lower(): {k.lower(): v for k, v in holders.items()}
            for token, holders in state.get("erc20", {}).items()
        },
        "errors": {a.lower() for a in state.get("errors", [])},
    }


def evm_call(node: NodeState, method: str, params: list[Any]) -> Any:
    """Result of one EVM call; raises LookupError for a JSON-RPC error."""
    state = node.evm
    if method == "eth_getBalance":
        address, tag = params
        if tag != "latest":
            raise LookupError("only the latest block is served")
        if address.lower() in state["errors"]:
            raise LookupError("header not found")
        return hex(int(state["eth"].get(address.lower(), "0")))
    if method == "eth_call":
        call, _tag = params
        data = call["data"]
        if not data.startswith(BALANCE_OF) or len(data) != 10 + 64:
            raise LookupError("execution reverted")
        address = "0x" + data[-40:]
        if address in state["errors"]:
            raise LookupError("execution reverted")
        holders = state["erc20"].get(call["to"].lower())
        if holders is None:
            return "0x"
        return "0x" + format(int(holders.get(address, "0")), "064x")
    raise NotImplementedError(method)


def evm_answer(node: NodeState, request: dict[str, Any]) -> dict[str, Any]:
    base = {"jsonrpc": "2.0", "id": request.get("id")}
    try:
        return {**base, "result": evm_call(node, request["method"], request["params"])}
    except LookupError as exc:
        return {**base, "error": {"code": -32000, "message": str(exc)}}
    except NotImplementedError:
        return {**base, "error": {"code": -32601, "message": "method not found"}}


def xrpl_answer(node: NodeState, request: dict[str, Any]) -> dict[str, Any]:
    if request.get("method") != "account_info":
        return {"result": {"error": "unknownCmd", "status": "error"}}
    params = request["params"][0]
    account = params["account"]
    if params.get("ledger_index") != "validated":
        return {"result": {"error": "invalidParams", "status": "error"}}
    if account in node.state.get("errors", []):
        return {"result": {"error": "noNetwork", "status": "error"}}
    accounts = node.state.get("accounts", {})
    if account not in accounts:
        return {
            "result": {
                "account": account,
                "error": "actNotFound",
                "error_message": "Account not found.",
                "status": "error",
                "validated": True,
            }
        }
    data = {"Account": account, "Balance": str(accounts[account]), "Sequence": 1}
    return {"result": {"account_data": data, "status": "success", "validated": True}}


def _is_control(body: Any) -> bool:
    """Test-control calls bypass failure injection and are not counted."""
    return isinstance(body, dict) and str(body.get("method", "")).startswith("test_")


def xrpl_batch_item(node: NodeState, item: dict[str, Any]) -> dict[str, Any]:
    """One entry of rippled's ``batch`` method: the call's fields are inline."""
    params = {k: v for k, v in item.items() if k not in ("method", "id")}
    answer = xrpl_answer(node, {"method": item.get("method"), "params": [params]})
    return {**answer, "id": item.get("id")}


def make_handler(kind: str, node: NodeState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            if _is_control(body):
                self._send(200, json.dumps(self._answer(body)).encode())
                return
            with node.lock:
                node.http_requests += 1
                failing = node.fail_next > 0
                node.fail_next -= 1 if failing else 0
                garbage = node.garbage_next > 0
                node.garbage_next -= 1 if garbage else 0
            if failing:
                self._send(node.fail_status, b'{"error":"injected"}')
                return
            if garbage:
                self._send(200, b"<html>proxy error</html>")
                return
            self._send(200, json.dumps(self._answer(body)).encode())

        def _answer(self, body: Any) -> Any:
            if _is_control(body):
                result = node.control(body["method"], body.get("params"))
                return {"jsonrpc": "2.0", "id": body.get("id"), "result": result}
            items = body if isinstance(body, list) else [body]
            if isinstance(body, dict) and body.get("method") == "batch":
                items = body["params"]
            with node.lock:
                node.calls += len(items)
            if kind == "xrpl" and body.get("method") == "batch":
                return [xrpl_batch_item(node, item) for item in body["params"]]
            if kind == "xrpl":
                return xrpl_answer(node, body)
            answers = [evm_answer(node, item) for item in items]
            return list(reversed(answers)) if isinstance(body, list) else answers[0]

        def _send(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class Node:
    """Client side, for tests: start a node process, drive it, stop it."""

    def __init__(self, kind: str, state_file: Path, start_timeout: float = 15) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), kind, str(state_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{kind} node did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/"

    def control(self, method: str, *params: Any) -> Any:
        """Call one of the test_* control methods."""
        body = json.dumps(
            {"jsonrpc": "2.0", "id": 0, "method": method, "params": params}
        )
        request = urllib.request.Request(self.url, data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())["result"]

    def reset(self) -> None:
        """Empty state, no failure injected."""
        self.control("test_setState", {})
        self.control("test_failNext", 0)
        self.control("test_garbageNext", 0)

    def stop(self) -> None:
        """Kill the process and reap it."""
        self.proc.kill()
        self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def running_nodes(directory: Path) -> Iterator[dict[str, Node]]:
    """An EVM and an XRPL node, started empty, killed on exit."""
    empty = directory / "empty-state.json"
    empty.write_text("{}", encoding="utf-8")
    started: dict[str, Node] = {}
    try:
        for kind in ("evm", "xrpl"):
            started[kind] = Node(kind, empty)
        yield started
    finally:
        for node in started.values():
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["evm", "xrpl"])
    parser.add_argument("state", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    node = NodeState(json.loads(args.state.read_text(encoding="utf-8")))
    server = ThreadingHTTPServer(
        ("127.0.0.1", args.port), make_handler(args.kind, node)
    )
    server.daemon_threads = True
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
