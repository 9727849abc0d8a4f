"""vLLM's OpenAI-compatible server on 127.0.0.1 serves the SmolLM2 sharq folder to a real client
(`openai`, installed with vLLM): /v1/completions and /v1/chat/completions. The server starts on a
free port, is waited for at most START_TIMEOUT seconds, and is stopped (its process group) after."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

START_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(smollm2_folder, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(smollm2_folder),
        "--served-model-name",
        "smollm2-sharq",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "512",
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /health in {START_TIMEOUT} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine process it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_completions_and_chat(server):
    from openai import OpenAI

    client = OpenAI(base_url=server, api_key="unused")
    assert [m.id for m in client.models.list().data] == ["smollm2-sharq"]
    done = client.completions.create(
        model="smollm2-sharq", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert done.choices[0].text.strip() and done.usage.completion_tokens == 4
    chat = client.chat.completions.create(
        model="smollm2-sharq", max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Name one color."}]
    )
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content.strip()
    assert 0 < chat.usage.completion_tokens <= 4
