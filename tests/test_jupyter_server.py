"""The start-here notebook, opened the way JupyterLab opens it.

A real ``jupyter server`` is started on a free local port; the notebook is read
through the contents REST API, a session with the project's kernel is created
through the sessions API, and every code cell is executed over the kernel's
websocket channel with the Jupyter messaging protocol (v5). This covers what a
papermill run does not: the server, its kernel manager and the websocket
bridge JupyterLab talks to.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List

import pytest

requests = pytest.importorskip("requests")
websocket = pytest.importorskip("websocket")  # the websocket-client distribution

pytestmark = pytest.mark.notebook

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = "notebooks/00_start_here.ipynb"
SERVER_START_TIMEOUT_S = 90
SERVER_STOP_TIMEOUT_S = 30
HTTP_TIMEOUT_S = 30
KERNEL_READY_TIMEOUT_S = 120
CELL_TIMEOUT_S = 240


# -- the server --------------------------------------------------------------------------------
@dataclass
class JupyterServer:
    url: str
    token: str
    process: subprocess.Popen
    log_path: Path

    def request(self, method: str, path: str, **kwargs) -> "requests.Response":
        headers = {"Authorization": f"token {self.token}"}
        response = requests.request(method, self.url + path, headers=headers, timeout=HTTP_TIMEOUT_S, **kwargs)
        response.raise_for_status()
        return response

    def log_tail(self, n_chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n_chars:] if self.log_path.exists() else ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_environment(runtime_dir: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        GREENKD_PROGRESS="0",
        # Connection files of this throw-away server stay out of the user's runtime folder.
        JUPYTER_RUNTIME_DIR=str(runtime_dir),
        PYTHONUNBUFFERED="1",
    )
    # A headless Agg backend inherited from the test run would hide the figures the inline backend displays.
    env.pop("MPLBACKEND", None)
    return env


def wait_until_answering(server: JupyterServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"jupyter server exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            if requests.get(server.url + "/api/status", headers={"Authorization": f"token {server.token}"},
                            timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    pytest.fail(f"jupyter server did not answer /api/status within {SERVER_START_TIMEOUT_S} s:\n{server.log_tail()}")


def stop(process: subprocess.Popen) -> None:
    # SIGTERM lets the server shut its kernels down; kill only if it does not finish in time.
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=SERVER_STOP_TIMEOUT_S)


@pytest.fixture
def jupyter_server(tmp_path):
    port, token = free_port(), secrets.token_hex(24)
    log_path = tmp_path / "jupyter_server.log"
    command = [
        sys.executable, "-m", "jupyter_server",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={REPO}",
        # Containers often run the suite as root, which the server refuses unless told otherwise.
        "--allow-root",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=server_environment(tmp_path / "jupyter_runtime"), cwd=REPO)
    server = JupyterServer(f"http://127.0.0.1:{port}", token, process, log_path)
    try:
        wait_until_answering(server)
        yield server
    finally:
        stop(process)


# -- the notebook and its session ----------------------------------------------------------------
def cell_source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def code_cells_with_parameters(notebook: dict, parameters: Dict[str, str]) -> List[str]:
    """The code cells in order, with an assignment cell after the one tagged ``parameters`` (as papermill does)."""
    cells, injected = [], False
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        cells.append(cell_source(cell))
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            cells.append("\n".join(f"{name} = {value!r}" for name, value in parameters.items()))
            injected = True
    assert injected, f"{NOTEBOOK} has no cell tagged 'parameters'"
    return cells


@pytest.fixture
def notebook_session(jupyter_server):
    """A session for the notebook, as JupyterLab creates one when the notebook is opened; deleted afterwards."""
    specs = jupyter_server.request("GET", "/api/kernelspecs").json()["kernelspecs"]
    kernel_name = "greenkd" if "greenkd" in specs else "python3"
    session = jupyter_server.request(
        "POST", "/api/sessions",
        json={"path": NOTEBOOK, "name": Path(NOTEBOOK).name, "type": "notebook", "kernel": {"name": kernel_name}},
    ).json()
    try:
        yield session
    finally:
        if jupyter_server.process.poll() is None:
            jupyter_server.request("DELETE", f"/api/sessions/{session['id']}")


# -- talking to the kernel -----------------------------------------------------------------------
@dataclass
class Execution:
    """What the kernel sent back for one request: the reply and the iopub messages it caused."""

    reply: dict = field(default_factory=dict)
    outputs: List[dict] = field(default_factory=list)

    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.outputs
                       if m["msg_type"] == "stream" and m["content"]["name"] == "stdout")

    def errors(self) -> List[str]:
        return [f"{m['content']['ename']}: {m['content']['evalue']}" for m in self.outputs if m["msg_type"] == "error"]

    def images(self) -> List[dict]:
        return [m for m in self.outputs
                if m["msg_type"] in ("display_data", "execute_result") and "image/png" in m["content"]["data"]]


def message_json(frame) -> str:
    """A websocket frame's message as JSON text. A message with binary buffers (a widget's image) comes as one
    binary frame: the number of parts, the offset of each, then the JSON message and the buffers."""
    if isinstance(frame, str):
        return frame
    count = int.from_bytes(frame[:4], "big")
    offsets = [int.from_bytes(frame[4 + 4 * i:8 + 4 * i], "big") for i in range(count)]
    return frame[offsets[0]:offsets[1] if count > 1 else len(frame)].decode("utf-8")


class KernelChannel:
    """The kernel's websocket at ``/api/kernels/<id>/channels``: JSON messages with a ``channel`` field."""

    def __init__(self, server: JupyterServer, kernel_id: str):
        self.session_id = uuid.uuid4().hex
        url = server.url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels?session_id={self.session_id}"
        self.socket = websocket.create_connection(url, header=[f"Authorization: token {server.token}"],
                                                  timeout=HTTP_TIMEOUT_S)

    def close(self) -> None:
        self.socket.close()

    def request(self, msg_type: str, content: dict, timeout_s: float) -> Execution:
        """Send one shell request; collect until its reply and the kernel's return to idle."""
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "msg_type": msg_type, "session": self.session_id, "username": "greenkd-test",
                  "date": datetime.now(timezone.utc).isoformat(), "version": "5.3"}
        self.socket.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                                     "channel": "shell", "buffers": []}))
        execution, idle = Execution(), False
        deadline = time.monotonic() + timeout_s
        while not (execution.reply and idle):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{msg_type} got no complete answer within {timeout_s} s")
            self.socket.settimeout(remaining)
            message = json.loads(message_json(self.socket.recv()))
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if message["channel"] == "shell":
                execution.reply = message
            elif message["channel"] == "iopub":
                if message["msg_type"] == "status":
                    idle = message["content"]["execution_state"] == "idle"
                else:
                    execution.outputs.append(message)
        return execution

    def wait_until_ready(self) -> None:
        # A freshly started kernel may miss the first requests; kernel_info is safe to repeat until one is answered.
        deadline = time.monotonic() + KERNEL_READY_TIMEOUT_S
        while True:
            try:
                self.request("kernel_info_request", {}, timeout_s=min(10.0, max(deadline - time.monotonic(), 1.0)))
                return
            except (TimeoutError, websocket.WebSocketTimeoutException):
                if time.monotonic() > deadline:
                    raise

    def execute(self, code: str) -> Execution:
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}
        return self.request("execute_request", content, timeout_s=CELL_TIMEOUT_S)


# -- the test ------------------------------------------------------------------------------------
def test_start_here_runs_through_the_server_as_in_jupyterlab(jupyter_server, notebook_session, tmp_path):
    results_dir, output_dir = tmp_path / "results", tmp_path / "figures"
    notebook = jupyter_server.request("GET", f"/api/contents/{NOTEBOOK}", params={"content": 1}).json()
    assert notebook["type"] == "notebook"
    cells = code_cells_with_parameters(
        notebook["content"], {"profile": "smoke", "results_dir": str(results_dir), "output_dir": str(output_dir)}
    )

    channel = KernelChannel(jupyter_server, notebook_session["kernel"]["id"])
    try:
        channel.wait_until_ready()
        executions = []
        for index, code in enumerate(cells):
            execution = channel.execute(code)
            executions.append(execution)
            assert not execution.errors(), f"code cell {index} failed: {execution.errors()}\n{code}"
            assert execution.reply["content"]["status"] == "ok", f"code cell {index}: {execution.reply['content']}"
    finally:
        channel.close()

    printed = "".join(e.stdout() for e in executions)
    assert "five batches, five temperatures:" in printed
    assert "the fixed schedule: 4.0" in printed
    # One line for the teacher and one for the student, each with an energy label.
    accuracies = [float(a) for a in re.findall(r"test accuracy (\d+(?:\.\d+)?)%", printed)]
    assert len(accuracies) == 2, printed
    assert all(0.0 <= a <= 100.0 for a in accuracies)
    assert "kWh" in printed

    assert sum(len(e.images()) for e in executions) >= 2, "the notebook's two figures were not displayed as PNG"
    for figure in ("start_here_softmax_temperature", "start_here_stochastic_run"):
        for suffix in (".png", ".pdf"):
            assert (output_dir / figure).with_suffix(suffix).stat().st_size > 0
    assert any(results_dir.rglob("*")), "the runs were not written to the run store in tmp_path"
