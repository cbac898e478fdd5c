"""The local API (scripts/serve.py): it answers as the model does, streams, and rejects bad requests.

One server process with the tiny model serves every request test; it is stopped (its process group
killed) at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import load_script
from openai import OpenAI
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import ROOT as REPO_ROOT
from helpers.stand_in import TINY_MODEL_DIR

serve = load_script("serve")

MODEL = "models/tiny-llama-support"  # as a user passes it: requests name the model the same way
MAX_TOKENS = 32
MESSAGES = [{"role": "user", "content": "My order 48213 has not arrived yet. Can you check it?"}]
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SERVE = [sys.executable, serve.__file__]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, data: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with LOCAL.open(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def chat(url: str, **body) -> tuple[int, str]:
    return post(f"{url}/chat/completions", json.dumps({"model": MODEL, **body}).encode())


@contextlib.contextmanager
def serving(model: str, log: Path):
    """scripts/serve.py serving model on a free port, until the with-block ends: its base URL."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}  # the machine is shared
    with log.open("w") as out:
        process = subprocess.Popen(
            [*SERVE, "--model", model, "--port", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while "Serving" not in log.read_text():
            assert process.poll() is None, f"serve.py exited ({process.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, f"serve.py did not answer within 60 s:\n{log.read_text()}"
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The base URL of scripts/serve.py serving the tiny model on a free port."""
    with serving(MODEL, tmp_path_factory.mktemp("serve") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reply(client):
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    return answer.choices[0].message.content


def test_the_reply_is_the_models_own_greedy_generation(reply):
    tokenizer = AutoTokenizer.from_pretrained(TINY_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype="auto").eval()
    inputs = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert expected.strip(), "the tiny model generated nothing to compare"
    assert reply == expected


def test_streamed_chunks_add_up_to_the_reply(client, reply):
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    chunks = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == reply


BAD_REQUESTS = {
    "empty messages": (json.dumps({"model": MODEL, "messages": []}), 400, "non-empty list"),
    "unknown model": (json.dumps({"model": "no-such-model", "messages": MESSAGES}), 400, "pinned to"),
    "too long": (
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "order " * 3000}], "max_tokens": 8}
        ),
        400,
        "maximum context length is 2048",
    ),
    "malformed JSON": ('{"model": "' + MODEL + '", "messages": [', 422, "JSON decode error"),
    "not an object": ("[1, 2]", 422, "must be a JSON object"),
    "unknown role": (
        json.dumps({"model": MODEL, "messages": [{"role": "boss", "content": "hi"}]}),
        400,
        "messages[0].role",
    ),
    "missing role": (json.dumps({"model": MODEL, "messages": [{"content": "hi"}]}), 400, "messages[0].role"),
    "numeric role": (
        json.dumps({"model": MODEL, "messages": [{"role": 3, "content": "hi"}]}),
        400,
        "messages[0].role",
    ),
    "null content": (
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": None}]}),
        400,
        "messages[0].content",
    ),
    "negative max_tokens": (
        json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": -3}),
        400,
        "`max_tokens` must be",
    ),
    "text max_tokens": (
        json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": "lots"}),
        400,
        "`max_tokens` must be",
    ),
    "negative temperature": (
        json.dumps({"model": MODEL, "messages": MESSAGES, "temperature": -1}),
        400,
        "`temperature` must",
    ),
    "an image, no text": (
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        400,
        "reads text only",
    ),
    "no choices": (json.dumps({"model": MODEL, "messages": MESSAGES, "n": 0}), 400, "`n` must be 1"),
    "two choices": (
        json.dumps({"model": MODEL, "messages": MESSAGES, "n": 2}),
        400,
        "one choice per request",
    ),
    "logprobs as text": (
        json.dumps({"model": MODEL, "messages": MESSAGES, "logprobs": "many"}),
        400,
        "`logprobs` must",
    ),
    "logprobs asked for": (
        json.dumps({"model": MODEL, "messages": MESSAGES, "logprobs": True}),
        400,
        "log-probabilities",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_gets_a_4xx_that_says_why_and_the_server_goes_on(server, case):
    body, status, message = BAD_REQUESTS[case]
    got_status, got_body = post(f"{server}/chat/completions", body.encode())
    assert (got_status, message in got_body) == (status, True), got_body
    error = json.loads(got_body)["error"]  # OpenAI's error shape
    assert set(error) == {"message", "type", "param", "code"} and message in error["message"]
    assert chat(server, messages=MESSAGES, max_tokens=1)[0] == 200


ODD_VALUES = [None, True, -1, 0, 3.5, 1e9, "x", "", [], {}, [1], {"a": 1}, ["a", 2], {"999999": 1}]
FUZZED_FIELDS = [
    "model",
    "messages",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "frequency_penalty",
    "seed",
    "stop",
    "logit_bias",
    "tools",
    "chat_template_kwargs",
    "generation_config",
    "role",
    "content",
    "n",
    "logprobs",
    "top_logprobs",
]


def test_no_field_of_any_type_gets_a_500(server):
    """Every field, every odd value: a 2xx or a 4xx in OpenAI's shape, never a 500."""
    answers = {}
    for field in FUZZED_FIELDS:
        for value in ODD_VALUES:
            body = {"model": MODEL, "messages": [dict(MESSAGES[0])], "max_tokens": 2}
            if field in ("role", "content"):
                body["messages"][0][field] = value
            else:
                body[field] = value
            status, text = post(f"{server}/chat/completions", json.dumps(body).encode())
            answers[field, json.dumps(value)] = status
            if 400 <= status < 500:
                assert json.loads(text)["error"]["message"], text
    assert not {key: status for key, status in answers.items() if status >= 500 or status < 200}
    assert chat(server, messages=MESSAGES, max_tokens=1)[0] == 200


def test_a_port_in_use_is_named_before_the_model_loads():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*SERVE, "--port", str(port)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr and "--port" in done.stderr


@pytest.mark.parametrize("folder", ["no/such/folder", "data"])
def test_a_folder_that_is_not_a_model_is_named_with_the_fix(folder):
    done = subprocess.run(
        [*SERVE, "--model", folder], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert folder in done.stderr and "MODEL=models/tiny-llama-support" in done.stderr


def test_an_adapter_is_merged_into_its_base_once(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "MERGED_DIR", tmp_path / "merged")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(TINY_MODEL_DIR, dtype="auto")
    # nonzero B: it changes
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(base, config).eval()
    adapted.save_pretrained(tmp_path / "adapter")
    merged_dir = serve.merged_copy(tmp_path / "adapter")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    # served with the base's tokenizer and chat template
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    ids = tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, adapted(**ids).logits, rtol=1e-4, atol=1e-4)
    saved = (merged_dir / "model.safetensors").stat().st_mtime_ns
    assert serve.merged_copy(tmp_path / "adapter") == merged_dir
    assert (merged_dir / "model.safetensors").stat().st_mtime_ns == saved  # reused, not merged again
