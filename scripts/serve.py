"""Serve a model folder behind an OpenAI-compatible chat-completions API on this machine, until Ctrl-C.

Usage (from the repository root; `make serve MODEL=... PORT=...` does this inside .venv):
    python scripts/serve.py [--model models/tiny-llama-support] [--port 8000] [--host 127.0.0.1]

The server is transformers' own (`transformers serve`, from transformers[serving]), pinned to one model, which
requests name as printed at start (the folder as given). The folder holds either a full model (config.json:
models/tiny-llama-support, outputs/lora-merged, outputs/full-model) or a LoRA adapter (adapter_config.json:
outputs/lora-adapter). transformers serve loads full models only, so an adapter is first merged into the base
named in its adapter_config.json, once, into .cache/serve/ (again only when the adapter changes).

Checks run before transformers serve's own, answering 400 with the field's name, as OpenAI's API and vLLM do:
`messages` must be a non-empty list of {"role", "content"} objects with a string role and a string (or list)
content (transformers serve answers 500 "Internal Server Error" to [], to a missing `messages`, to a message
without a role, to a numeric role and to a null content); max_tokens must be a positive whole number and
temperature a number from 0 to 2, top_p from 0 to 1 (a negative or non-numeric max_tokens was a 500, a
negative temperature was accepted); and the prompt plus max_tokens must fit in the model's context,
max_position_embeddings (transformers serve generates past it, with 200).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

from helpers import ROOT

MERGED_DIR = ROOT / ".cache" / "serve"
MARKER = "merged_from.json"
# Plain HTTP to this machine, never through a proxy the environment may name.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fail(message: str) -> None:
    sys.exit(f"serve.py: {message}")


def folder_kind(folder: Path) -> str:
    """'model' or 'adapter'; exits with the fix when the folder is neither."""
    example = "make serve MODEL=models/tiny-llama-support (or --model); notebook 2 writes outputs/lora-merged"
    if not folder.is_dir():
        fail(f"no folder {folder}. Pass a model folder: {example}.")
    if (folder / "config.json").is_file():
        return "model"
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    fail(
        f"{folder} has neither config.json (a saved model) nor adapter_config.json (a saved LoRA adapter). "
        f"Pass the folder save_pretrained wrote: {example}."
    )


def check_port_free(host: str, port: int) -> None:
    """Bind the port as uvicorn will (SO_REUSEADDR), so a port in use is reported before the model loads."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            fail(
                f"port {port} on {host} is in use ({e.strerror}): stop what listens there, "
                f"or pick another port: make serve PORT={port + 1} (or --port {port + 1})."
            )


def merged_copy(adapter: Path) -> Path:
    """The adapter merged into its base, saved with the tokenizer as a model folder under .cache/serve/."""
    weights = adapter / "adapter_model.safetensors"
    mtime_ns = weights.stat().st_mtime_ns if weights.exists() else 0
    source = {"adapter": str(adapter.resolve()), "mtime_ns": mtime_ns}
    out = MERGED_DIR / adapter.resolve().name
    if (out / MARKER).is_file() and json.loads((out / MARKER).read_text()) == source:
        return out

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.artifacts import atomic_dir
    from helpers.checks import check_adapter_base

    base_name = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    print(f"Merging the adapter {adapter} into its base {base_name} -> {out} ...", flush=True)
    base = AutoModelForCausalLM.from_pretrained(base_name, dtype="auto")
    check_adapter_base(adapter, base)
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    has_tokenizer = (adapter / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base_name)
    with atomic_dir(out) as folder:
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / MARKER).write_text(json.dumps(source))
    return out


ROLES = ("system", "developer", "user", "assistant", "tool")


def _number(low: float, high: float):
    """A check that a value is a number (not a bool) from low to high."""
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high


def _whole(v: object) -> bool:
    """Whether a value is a whole number (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _json_object(text: object) -> bool:
    """Whether text is a string holding a JSON object."""
    try:
        return isinstance(text, str) and isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


# What each field of a chat-completions request may hold (OpenAI's ranges), checked before anything uses it.
FIELDS = {
    "model": (lambda v: isinstance(v, str), "a string: the model name printed at start"),
    "stream": (lambda v: isinstance(v, bool), "true or false"),
    "max_tokens": (lambda v: _whole(v) and v >= 1, "a whole number of tokens, at least 1"),
    "max_completion_tokens": (lambda v: _whole(v) and v >= 1, "a whole number of tokens, at least 1"),
    "temperature": (_number(0, 2), "a number from 0 to 2"),
    "top_p": (_number(0, 1), "a number from 0 to 1"),
    "frequency_penalty": (
        lambda v: _number(-2, 2)(v) and v > -1,  # transformers serve: repetition_penalty = 1 + v > 0
        "a number above -1 and at most 2 (this server turns it into a repetition penalty of 1 + it)",
    ),
    "seed": (_whole, "a whole number"),
    "stop": (
        lambda v: (
            isinstance(v, str)
            or (isinstance(v, list) and 0 < len(v) <= 4 and all(isinstance(x, str) for x in v))
        ),
        "a string or a list of up to 4 strings",
    ),
    "logit_bias": (
        lambda v: (
            isinstance(v, dict)
            and all(k.lstrip("-").isdigit() and _number(-100, 100)(x) for k, x in v.items())
        ),
        "an object mapping token ids to numbers from -100 to 100",
    ),
    "tools": (
        lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v),
        "a list of tool objects",
    ),
    "chat_template_kwargs": (lambda v: isinstance(v, dict), "an object of chat-template arguments"),
    "generation_config": (_json_object, "a string holding a JSON object of generation settings"),
    # what this server cannot do is refused, not ignored
    "n": (lambda v: _whole(v) and v == 1, "1: this server returns one choice per request"),
    "logprobs": (lambda v: v is False, "false: this server does not return log-probabilities"),
    "top_logprobs": (lambda v: _whole(v) and v == 0, "0: this server does not return log-probabilities"),
}


class BadRequest(Exception):
    """A request field that is missing or holds what it may not: answered with 400 in OpenAI's error shape."""

    def __init__(self, param: str | None, message: str, status: int = 400):
        super().__init__(message)
        self.param, self.message, self.status = param, message, status

    def response(self):
        """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
        from fastapi.responses import JSONResponse

        error = {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": None}
        return JSONResponse(status_code=self.status, content={"error": error})


def check_messages(messages: object) -> None:
    """BadRequest unless messages is a non-empty list of {"role", "content"} objects the template can take."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", '`messages` must be a non-empty list of {"role", "content"} objects.')
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise BadRequest(
                where, f'`{where}` must be an object with "role" and "content", got {message!r}.'
            )
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise BadRequest(
                f"{where}.role", f"`{where}.role` must be one of {', '.join(ROLES)}; got {role!r}."
            )
        parts_ok = isinstance(content, list) and all(
            isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
        )
        tool_call = role == "assistant" and content is None and message.get("tool_calls")
        if not (isinstance(content, str) or parts_ok or tool_call):
            raise BadRequest(
                f"{where}.content",
                f"`{where}.content` must be a string (or a list of content parts with a "
                f"\"type\"), got {content!r}.",
            )
        for number, part in enumerate(content if parts_ok else []):
            if part["type"] != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(
                    f"{where}.content[{number}]",
                    f"`{where}.content[{number}]` is a {part['type']!r} part: this model reads text only, "
                    'so each part must be {"type": "text", "text": "..."} (or send the content as a string).',
                )


def reject_bad_request(handler, body: dict) -> None:
    """Raise BadRequest for what transformers serve would otherwise answer with a generation or a 500."""
    from fastapi import HTTPException

    if not isinstance(body, dict):
        raise BadRequest(None, "The request body must be a JSON object.")
    try:
        handler._validate_request(body)  # unknown fields
    except HTTPException as error:
        raise BadRequest(None, str(error.detail), error.status_code) from None
    check_messages(body.get("messages"))
    for field, (ok, allowed) in FIELDS.items():
        if body.get(field) is not None and not ok(body[field]):
            raise BadRequest(field, f"`{field}` must be {allowed}; got {body[field]!r}.")
    try:
        _, model, processor = handler._resolve_model(dict(body))  # another model than the served one
    except HTTPException as error:
        raise BadRequest("model", str(error.detail), error.status_code) from None
    modality = handler.model_manager.get_model_modality(model, processor=processor)
    try:
        prompt = processor.apply_chat_template(
            handler.get_processor_inputs_from_messages(body["messages"], modality),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            **{**handler.chat_template_kwargs, **body.get("chat_template_kwargs", {})},
        )["input_ids"]
    except Exception as error:  # the model's own template refused these messages (e.g. roles out of order)
        raise BadRequest(
            "messages", f"The model's chat template cannot render these messages: {error}"
        ) from None
    vocab = model.config.get_text_config().vocab_size
    outside = [k for k in body.get("logit_bias") or {} if not 0 <= int(k) < vocab]
    if outside:
        raise BadRequest(
            "logit_bias",
            f"`logit_bias` names token ids outside this model's vocabulary (0 to {vocab - 1}): {outside}.",
        )
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    wanted = body.get("max_completion_tokens") or body.get("max_tokens") or 1
    if context is not None and len(prompt) + wanted > context:
        raise BadRequest(
            "messages",
            f"This model's maximum context length is {context} tokens; the messages take {len(prompt)} and "
            f"max_tokens asks for {wanted} more. Shorten the messages or lower max_tokens.",
        )


def add_request_checks() -> None:
    """Put reject_bad_request in front of transformers serve's chat-completions handler."""
    from transformers.cli.serving import chat_completion

    class CheckedChatCompletionHandler(chat_completion.ChatCompletionHandler):
        async def handle_request(self, body: dict, request_id: str):
            try:
                reject_bad_request(self, body)
            except BadRequest as error:
                return error.response()
            if body.get("logit_bias") == {}:  # no bias; transformers serve fails on an empty one
                del body["logit_bias"]
            return await super().handle_request(body, request_id)

    chat_completion.ChatCompletionHandler = CheckedChatCompletionHandler  # Serve imports it by this name

    from fastapi.exceptions import RequestValidationError
    from transformers.cli.serving import server

    build_server = server.build_server

    def build_server_with_openai_errors(*args, **kwargs):
        """transformers serve's app; a body that is not a JSON object gets OpenAI's error shape too."""
        app = build_server(*args, **kwargs)

        async def not_an_object(_request, error: RequestValidationError):
            problem = "; ".join(str(e.get("msg")) for e in error.errors()) or "invalid body"
            return BadRequest(None, f"The request body must be a JSON object ({problem}).", 422).response()

        app.add_exception_handler(RequestValidationError, not_an_object)
        return app

    server.build_server = build_server_with_openai_errors  # Serve imports it from this module when it starts


def announce_when_answering(url: str, model: str, wait: float, timed_out: threading.Event) -> None:
    """Print the URL and an example once /v1/models answers; stop the server if not within `wait` s."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with LOCAL.open(f"{url}/models", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    else:
        print(f"serve.py: {url}/models did not answer within {wait:.0f} s; stopping.", file=sys.stderr)
        timed_out.set()
        os.kill(os.getpid(), signal.SIGINT)
        return
    example = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32}
    print(
        f"\nServing {model} at {url} (OpenAI-compatible; Ctrl-C stops it). Try:\n"
        f"  curl {url}/chat/completions -H 'Content-Type: application/json' -d '{json.dumps(example)}'\n",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/tiny-llama-support", help="model or LoRA adapter folder")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="127.0.0.1", help="127.0.0.1: this machine only")
    parser.add_argument("--wait", type=float, default=300, help="seconds to wait for the server to answer")
    args = parser.parse_args()

    folder = Path(args.model)
    kind = folder_kind(folder)
    check_port_free(args.host, args.port)
    model = args.model if kind == "model" else os.path.relpath(merged_copy(folder))

    add_request_checks()
    from transformers.cli.serve import Serve

    url = f"http://{args.host}:{args.port}/v1"
    timed_out = threading.Event()
    threading.Thread(
        target=announce_when_answering, args=(url, model, args.wait, timed_out), daemon=True
    ).start()
    try:
        Serve(force_model=model, host=args.host, port=args.port)  # loads the model, then serves
    except KeyboardInterrupt:
        sys.exit(1 if timed_out.is_set() else 0)


if __name__ == "__main__":
    main()
