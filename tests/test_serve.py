"""The OpenAI-compatible server, for real: uvicorn on a loopback port, the official `openai` client,
bad input of every kind, a cancelled stream, a full queue, a timeout and a bounded load test."""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from PIL import Image

from benchmarks.serve_load import answered_differently, client_for, drawn_png, mixed_requests, run_load
from fast_dvlm import DiffusionVLM, load
from fast_dvlm.cli import main
from fast_dvlm.decoding.batch import Batch
from fast_dvlm.serve.app import ServeConfig, create_app
from fast_dvlm.serve.runner import serving_in_background

MAX_PIXELS = 128 * 128
SHORT = 24  # max_tokens of ordinary requests
BODY_LIMIT = 64 * 1024  # bytes, on the strict server
# An answer the tiny model does not end on its own for thousands of tokens: seconds of decoding.
LONG = {"messages": [{"role": "user", "content": "Write a short story."}], "max_tokens": 3000, "mode": "ar"}


@dataclass(frozen=True)
class Served:
    url: str
    vlm: DiffusionVLM
    allowed: Path  # local image paths may point here
    outside: Path  # an image file outside it


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Iterator[Served]:
    allowed, outside = tmp_path_factory.mktemp("allowed"), tmp_path_factory.mktemp("outside")
    png_file(allowed / "shapes.png", seed=3)
    png_file(outside / "secret.png", seed=4)
    (allowed / "link.png").symlink_to(outside / "secret.png")
    vlm = load("tiny:qwen2_5_vl")
    config = ServeConfig(
        "tiny", mode="ar", allowed_dirs=(allowed,), queue_size=16, timeout=60, max_pixels=MAX_PIXELS
    )
    with serving_in_background(create_app(vlm, config)) as url:
        yield Served(url, vlm, allowed, outside / "secret.png")


@pytest.fixture(scope="module")
def strict_url() -> Iterator[str]:
    """A second server: one answer decoded at a time, one waiting slot and a 3-second timeout."""
    config = ServeConfig(
        "tiny", mode="ar", max_batch_size=1, queue_size=1, timeout=3, max_body_bytes=BODY_LIMIT
    )
    with serving_in_background(create_app(load("tiny:qwen2_5_vl"), config)) as url:
        yield url


def png_file(path: Path, seed: int) -> Path:
    path.write_bytes(base64.b64decode(drawn_png(seed).partition(",")[2]))
    return path


def user(*parts: dict) -> list[dict]:
    return [{"role": "user", "content": list(parts)}]


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def ask(url: str, messages: list[dict], mode: str = "ar", extra: dict | None = None, **options):
    """A plain completion through the openai client; `extra` adds fast-dvlm fields to the body."""
    options.setdefault("max_tokens", SHORT)
    return client_for(url).chat.completions.create(
        model="tiny", messages=messages, extra_body={"mode": mode} | (extra or {}), **options
    )


def ask_streaming(
    url: str, messages: list[dict], mode: str = "ar", extra: dict | None = None, **options
) -> tuple[list[str], tuple[str, object]]:
    """The text chunks of a streamed answer, and its finish reason and usage."""
    options.setdefault("max_tokens", SHORT)
    stream = client_for(url).chat.completions.create(
        model="tiny",
        messages=messages,
        extra_body={"mode": mode} | (extra or {}),
        stream=True,
        stream_options={"include_usage": True},
        **options,
    )
    pieces, chunks = [], list(stream)
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [finish[-1]] and chunks[-1].usage is not None
    return pieces, (finish[-1], chunks[-1].usage)


def raw(url: str, method: str, path: str, body: object = None) -> tuple[int, dict, dict]:
    """One HTTP request without any client-side checks (bytes are sent as they are, anything else as
    JSON): status, JSON body, headers (names in lower case)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    payload = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    headers = {name.lower(): value for name, value in response.getheaders()}
    status, data = response.status, json.loads(response.read())
    connection.close()
    return status, data, headers


def wait_idle(url: str, within: float) -> None:
    """Return once the engine has nothing running or waiting; fail if that takes over `within` s."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        health = raw(url, "GET", "/health")[1]
        if not health["busy"] and not health["waiting"]:
            return
        time.sleep(0.02)
    raise AssertionError(f"the engine was still busy after {within} s")


# --- answers ---------------------------------------------------------------------------------


def test_models_and_health(served):
    assert [m.id for m in client_for(served.url).models.list().data] == ["tiny"]
    status, health, _ = raw(served.url, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"


def test_answer_and_usage_are_the_library_s(served):
    png = drawn_png(5)
    reply = ask(served.url, user(image(png), text("What is shown?")))
    picture = Image.open(io.BytesIO(base64.b64decode(png.partition(",")[2])))
    direct = served.vlm.generate(
        [{"role": "user", "content": [{"type": "image", "image": picture}, text("What is shown?")]}],
        mode="ar",
        max_new_tokens=SHORT,
    )
    assert reply.choices[0].message.content == direct.text
    assert reply.choices[0].finish_reason == "length"
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (direct.prompt_tokens, len(direct.token_ids))
    assert usage.nfe == direct.nfe and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("mode", ["ar", "spec-linear", "diffusion"])
def test_streamed_text_equals_the_plain_answer(served, mode):
    messages = user(image(drawn_png(6)), text("Count the shapes."))
    plain = ask(served.url, messages, mode, {"block_size": 8}, max_tokens=40)
    pieces, (finish, usage) = ask_streaming(served.url, messages, mode, {"block_size": 8}, max_tokens=40)
    assert len(pieces) > 1  # sent block by block, not all at the end
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert usage.model_dump() == plain.usage.model_dump()


@pytest.mark.parametrize("prompt", ["Describe the colours.", "Write a short story."])
def test_spec_linear_answers_exactly_what_ar_does(served, prompt):
    messages = user(image(drawn_png(7)), text(prompt))
    ar = ask(served.url, messages, "ar", max_tokens=48)
    spec = ask(served.url, messages, "spec-linear", max_tokens=48)
    assert spec.choices[0].message.content == ar.choices[0].message.content
    assert spec.usage.completion_tokens == ar.usage.completion_tokens


def test_stop_string_cuts_the_answer_streamed_or_not(served):
    messages = user(text("Describe the colours."))
    full = ask(served.url, messages, max_tokens=40).choices[0].message.content
    stop = full[12:15]
    expected = full[: full.index(stop)]
    reply = ask(served.url, messages, max_tokens=40, stop=[stop, "never-said"])
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
    pieces, (finish, _) = ask_streaming(served.url, messages, max_tokens=40, stop=stop)
    assert "".join(pieces) == expected and finish == "stop"


def test_sampling_fields_clients_send_are_accepted_and_decoding_stays_greedy(served):
    messages = user(text("Count the shapes."))
    plain = ask(served.url, messages).choices[0].message.content
    assert (
        ask(served.url, messages, temperature=0.7, top_p=0.9, seed=1, user="me").choices[0].message.content
        == plain
    )


def test_local_paths_in_allowed_folders(served):
    path = served.allowed / "shapes.png"
    inline = ask(served.url, user(image(drawn_png(3)), text("What is shown?"))).choices[0].message.content
    for url in (str(path), path.as_uri()):
        assert ask(served.url, user(image(url), text("What is shown?"))).choices[0].message.content == inline


# --- bad input -------------------------------------------------------------------------------


def chat(messages: list[dict] | str, **fields) -> dict:
    return {"model": "tiny", "messages": messages, "max_tokens": SHORT} | fields


def long_text(words: int) -> str:
    return " ".join(f"w{i * 7919 % 100003}" for i in range(words))


def corrupt_png() -> str:
    data = base64.b64decode(drawn_png(1).partition(",")[2])
    return "data:image/png;base64," + base64.b64encode(data[: len(data) // 2]).decode()


def big_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), (9, 9, 9)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


BAD_REQUESTS = {
    # name: (body, status, code, param)
    "malformed JSON": (b'{"messages": [', 400, "invalid_json", None),
    "body not an object": ([1, 2], 400, "model_attributes_type", None),
    "max_tokens a string": (chat(user(text("hi")), max_tokens="ten"), 400, "int_type", "max_tokens"),
    "max_tokens zero": (chat(user(text("hi")), max_tokens=0), 400, "greater_than_equal", "max_tokens"),
    "messages a string": (chat("hello"), 400, "list_type", "messages"),
    "stream a string": (chat(user(text("hi")), stream="yes"), 400, "bool_type", "stream"),
    "unknown field": (chat(user(text("hi")), max_tokenz=5), 400, "extra_forbidden", "max_tokenz"),
    "unknown role": (chat([{"role": "robot", "content": "hi"}]), 400, "literal_error", "messages.0.role"),
    "unknown part type": (
        chat(user({"type": "audio", "audio": "x"})),
        400,
        "union_tag_invalid",
        "messages.0.content.0",
    ),
    "stop list of numbers": (chat(user(text("hi")), stop=["a", 3]), 400, "string_type", "stop.1"),
    "unknown mode": (chat(user(text("hi")), mode="fastest"), 400, "value_error", "mode"),
    "contradictory blocks": (
        chat(user(text("hi")), block_size=8, sub_block_size=3),
        400,
        "invalid_request",
        None,
    ),
    "n above one": (chat(user(text("hi")), n=2), 400, "literal_error", "n"),
    "empty messages": (chat([]), 400, "too_short", "messages"),
    "empty stop string": (chat(user(text("hi")), stop=""), 400, "string_too_short", "stop"),
    "non-image data URL": (
        chat(user(image("data:text/plain;base64,aGVsbG8="))),
        400,
        "invalid_image",
        "messages.0.content.0.image_url.url",
    ),
    "non-image bytes": (chat(user(image("data:image/png;base64,aGVsbG8="))), 400, "invalid_image", None),
    "corrupt PNG": (chat(user(image(corrupt_png()))), 400, "invalid_image", None),
    "bad base64": (chat(user(image("data:image/png;base64,@@@"))), 400, "invalid_image", None),
    "http URL": (chat(user(image("http://example.com/cat.png"))), 400, "image_url_not_allowed", None),
    "https URL": (chat(user(image("https://example.com/cat.png"))), 400, "image_url_not_allowed", None),
    "over the pixel cap": (chat(user(image(big_png()))), 400, "image_too_large", None),
    "extreme aspect ratio": (chat(user(image(drawn_png(1, (250, 1))))), 400, "invalid_input", None),
    "image token in text": (chat(user(text("look: <|image_pad|>"))), 400, "invalid_input", None),
    "prompt over the context": (
        chat(user(text(long_text(6000)))),
        400,
        "context_length_exceeded",
        "messages",
    ),
    "answer over the context": (
        chat(user(text("hi")), max_tokens=5000),
        400,
        "context_length_exceeded",
        None,
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_gets_a_4xx_with_an_openai_error_body(served, name):
    body, status, code, param = BAD_REQUESTS[name]
    got, data, _ = raw(served.url, "POST", "/v1/chat/completions", body)
    assert got == status, data
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
    assert data["error"]["code"] == code and data["error"]["message"]
    assert data["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert data["error"]["param"] == param
    assert " at 0x" not in data["error"]["message"] and "\n" not in data["error"]["message"]


def test_a_non_image_upload_is_named_plainly_and_the_log_line_says_why(served, caplog):
    caplog.set_level(logging.INFO, logger="fast_dvlm.serve")
    body = chat(user(image("data:image/png;base64,aGVsbG8="), text("hi")))  # the bytes of "hello"
    status, data, _ = raw(served.url, "POST", "/v1/chat/completions", body)
    message = "cannot read the image: not a valid image file (no image format recognised)"
    assert status == 400 and data["error"]["message"] == message
    # no waiting: the line is written before the response's last bytes go out, so it is here now, and
    # no earlier test's line can still arrive (each was written before that test had its response)
    lines = [r.getMessage() for r in caplog.records if " 400 " in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("POST /v1/chat/completions 400 ")
    assert lines[0].endswith(f" invalid_image: {message}")


@pytest.mark.parametrize("where", ["outside", "traversal", "symlink", "file URL"])
def test_disallowed_paths_are_refused(served, where):
    url = {
        "outside": str(served.outside),
        "traversal": f"{served.allowed}/../{served.outside.parent.name}/secret.png",
        "symlink": str(served.allowed / "link.png"),
        "file URL": served.outside.as_uri(),
    }[where]
    status, data, _ = raw(served.url, "POST", "/v1/chat/completions", chat(user(image(url), text("hi"))))
    assert status == 403 and data["error"]["code"] == "path_not_allowed"
    assert data["error"]["type"] == "permission_error"


def test_missing_file_in_an_allowed_folder(served):
    missing = str(served.allowed / "nothing.png")
    status, data, _ = raw(served.url, "POST", "/v1/chat/completions", chat(user(image(missing))))
    assert status == 400 and data["error"]["code"] == "image_not_found"


def test_the_openai_client_sees_the_error(served):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(served.url, user(image("https://example.com/cat.png")))
    assert caught.value.body["code"] == "image_url_not_allowed"


def test_unknown_route_and_method(served):
    status, data, _ = raw(served.url, "GET", "/v1/nothing")
    assert status == 404 and data["error"]["code"] == "not_found"
    status, data, _ = raw(served.url, "GET", "/v1/chat/completions")
    assert status == 405 and data["error"]["type"] == "invalid_request_error"


def test_still_serving_after_bad_input(served):
    for body, *_ in BAD_REQUESTS.values():
        raw(served.url, "POST", "/v1/chat/completions", body)
    assert raw(served.url, "GET", "/health")[0] == 200
    assert ask(served.url, user(text("hi"))).choices[0].message.content


# --- load, cancellation, back-pressure, timeout ----------------------------------------------


@pytest.fixture
def slow_rounds(monkeypatch) -> None:
    """Every decoding round takes at least 10 ms, so LONG's 3000 rounds last 30 s or more on any
    machine: only a cancellation or a timeout can end it within the seconds these tests allow."""
    rounds = Batch.round

    def slow_round(batch: Batch):
        time.sleep(0.01)
        return rounds(batch)

    monkeypatch.setattr(Batch, "round", slow_round)


def test_abandoned_stream_frees_the_engine_at_the_next_block(served, slow_rounds):
    stream = client_for(served.url).chat.completions.create(
        model="tiny", messages=LONG["messages"], max_tokens=LONG["max_tokens"], stream=True
    )
    with stream:
        assert len(list(islice(stream, 3))) == 3
    wait_idle(served.url, within=2.0)  # the whole answer would take 30 s (slow_rounds)
    assert ask(served.url, user(text("hi"))).choices[0].message.content


def test_timeout_answers_504_and_frees_the_engine(strict_url, slow_rounds):
    status, data, _ = raw(strict_url, "POST", "/v1/chat/completions", LONG)
    assert status == 504 and data["error"]["code"] == "timeout"
    wait_idle(strict_url, within=2.0)
    assert ask(strict_url, user(text("hi"))).choices[0].message.content


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_gets_413_and_the_server_keeps_serving(strict_url, chunked):
    data_url = "data:image/png;base64," + "A" * BODY_LIMIT  # refused before any decoding of it
    body = json.dumps({"model": "tiny", "messages": user(text("hi"), image(data_url))}).encode()
    parts = urlsplit(strict_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    if chunked:  # no Content-Length: counted as it arrives
        pieces = (body[k : k + 4096] for k in range(0, len(body), 4096))
        connection.request("POST", "/v1/chat/completions", body=pieces, encode_chunked=True)
    else:
        connection.request("POST", "/v1/chat/completions", body=body)
    response = connection.getresponse()
    error = json.loads(response.read())["error"]
    connection.close()
    assert response.status == 413 and error["code"] == "body_too_large" and "0.1 MiB" in error["message"]
    assert ask(strict_url, user(text("hi")), max_tokens=4).usage.completion_tokens == 4


def test_full_queue_answers_429_with_retry_after(strict_url, slow_rounds):
    running = client_for(strict_url).chat.completions.create(
        model="tiny", messages=LONG["messages"], max_tokens=LONG["max_tokens"], stream=True
    )
    with running:
        next(iter(running))  # decoding has begun: the engine is busy
        waiting = threading.Thread(target=raw, args=(strict_url, "POST", "/v1/chat/completions", LONG))
        waiting.start()
        while raw(strict_url, "GET", "/health")[1]["waiting"] == 0:
            time.sleep(0.01)
        status, data, headers = raw(strict_url, "POST", "/v1/chat/completions", chat(user(text("hi"))))
    assert status == 429 and data["error"]["code"] == "queue_full" and int(headers["retry-after"]) >= 1
    waiting.join()
    wait_idle(strict_url, within=2.0)
    assert ask(strict_url, user(text("hi"))).choices[0].message.content


def test_requests_are_decoded_together_and_leave_the_batch_when_done(served):
    """Continuous batching: long answers run side by side (the health check counts them), a short one
    joins them, finishes first and is the answer it gives alone; closing the streams empties the batch."""
    client = client_for(served.url)
    streams = [
        client.chat.completions.create(
            model="tiny", messages=LONG["messages"], max_tokens=LONG["max_tokens"], stream=True
        )
        for _ in range(3)
    ]
    try:
        for stream in streams:
            next(iter(stream))  # each has begun decoding
        assert raw(served.url, "GET", "/health")[1]["running"] == 3
        batched = ask(served.url, user(text("Count the shapes.")), "spec-linear").choices[0].message.content
        assert raw(served.url, "GET", "/health")[1]["running"] == 3  # the short one has left
    finally:
        for stream in streams:
            stream.close()
    wait_idle(served.url, within=2.0)
    alone = ask(served.url, user(text("Count the shapes.")), "spec-linear").choices[0].message.content
    assert batched == alone


def test_load_no_5xx_and_every_answer_is_its_own(served):
    requests = mixed_requests(40, abandon_every=5, max_tokens=SHORT)
    run = run_load(served.url, requests, concurrency=8)
    assert [r.status for r in run.results] == [200] * len(requests)
    answered = [r for r in run.results if r.text is not None]
    assert len(answered) == sum(r.abandon_after is None for r in requests)
    assert len({r.text for r in answered}) >= 10  # answers differ, so a mix-up would show
    assert answered_differently(served.url, run) == []
    wait_idle(served.url, within=2.0)


# --- the command ---------------------------------------------------------------------------


def test_the_serve_command_serves_and_logs_one_line_per_request():
    with socket.socket() as probe:  # a free port, for the moment
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "fast_dvlm.cli",
        "serve",
        "--model",
        "tiny:qwen2_5_vl",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            try:
                if raw(url, "GET", "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        reply = ask(url, user(text("hi")), "spec-linear", max_tokens=8)
        assert reply.model == "tiny:qwen2_5_vl" and reply.usage.completion_tokens == 8
    finally:
        server.send_signal(signal.SIGINT)
        _, log = server.communicate(timeout=60)
    assert server.returncode == 0, log
    assert "POST /v1/chat/completions 200" in log and "completion_tokens=8" in log
    assert log.count("POST /v1/chat/completions") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "sglang"], "SGLang serving needs the sglang extra and a CUDA GPU"),
        (["--allow-path", "/no/such/folder"], "allowed image folder /no/such/folder is not a folder"),
        (["--queue-size", "0"], "queue_size must be positive, got 0"),
    ],
)
def test_the_serve_command_refuses_what_it_cannot_do_in_one_line(capsys, args, message):
    assert main(["serve", "--model", "tiny:qwen2_5_vl", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
