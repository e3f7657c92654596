"""`edge-spec serve` as a child process on 127.0.0.1 and a free port, driven by real clients: the official
`openai` package, httpx and the README's curl example. Servers run the tiny generated models pinned to one
CPU; tests wait on the server's output lines and on responses, never on sleeps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from children import one_cpu
from served import EDGE_SPEC, Server, model_env
from tiny_gguf import write_tiny_model

EXACT = ["--no-flash-attn", "--cache-type", "f32"]
PROMPT = "hello world"
N = 8
README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return model_env(tmp_path_factory.mktemp("model_cache"))


@pytest.fixture(scope="module")
def server(env: dict[str, str], tiny_target: Path) -> Iterator[Server]:
    """The tiny target alone, greedy, 8 tokens per answer unless asked, a 256-token context."""
    s = Server(["--target", tiny_target, "-n", N, "--ctx", 256, *EXACT], env)
    yield s
    assert s.stop() == 0, s.stderr
    assert s.lines[-2:] == ["edge-spec: stopped", ""], s.stderr


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny target with a 32k training context: a generation runs long enough to interrupt."""
    return write_tiny_model(tmp_path_factory.mktemp("long") / "long.gguf", n_ctx_train=32768)


def _long_server(env: dict[str, str], long_model: Path) -> Server:
    return Server(["--target", long_model, "--ctx", 32768, "-n", 100_000], env)


def _messages(text: str = PROMPT) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---- the openai client ---------------------------------------------------------------------------------


def test_chat_completion_whole_and_streamed(client: openai.OpenAI, tiny_target: Path) -> None:
    whole = client.chat.completions.create(model=tiny_target.name, messages=_messages())  # type: ignore[arg-type]
    choice = whole.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert whole.usage is not None and whole.usage.completion_tokens == N
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + N
    extra = whole.model_extra or {}
    assert extra["edge_spec"]["generated_tokens"] == N and extra["edge_spec"]["slot"] == 0
    assert extra["timings"]["predicted_n"] == N

    stream = client.chat.completions.create(
        model=tiny_target.name,
        messages=_messages(),  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # greedy: the same answer
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finishing] == ["length"]
    assert (finishing[0].model_extra or {})["edge_spec"]["generated_tokens"] == N
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_completion_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="target", prompt=PROMPT, max_tokens=5)
    assert (
        whole.object == "text_completion" and whole.usage is not None and whole.usage.completion_tokens == 5
    )
    streamed = client.completions.create(model="target", prompt=PROMPT, max_tokens=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text


def test_text_equals_run(
    client: openai.OpenAI, server: Server, env: dict[str, str], tiny_target: Path
) -> None:
    """The same prompt and settings (greedy) give `edge-spec run`'s text, through the template and raw."""
    common = ["--target", tiny_target, "-n", N, "--ctx", 256, *EXACT, "--json"]
    for raw in (False, True):
        proc = subprocess.run(
            [*EDGE_SPEC, "run", PROMPT, *map(str, common), *(["--raw"] if raw else [])],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            preexec_fn=one_cpu,
        )
        assert proc.returncode == 0, proc.stderr
        expected = json.loads(proc.stdout)["text"]
        if raw:
            got = client.completions.create(model="target", prompt=PROMPT).choices[0].text
        else:
            got = (
                client.chat.completions.create(model="target", messages=_messages())
                .choices[0]
                .message.content
            )  # type: ignore[arg-type]
        assert got == expected and expected


def test_next_turn_reuses_the_cache(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="target", messages=_messages("the quick brown fox"))  # type: ignore[arg-type]
    history = [
        *_messages("the quick brown fox"),
        {"role": "assistant", "content": first.choices[0].message.content},
    ]
    second = client.chat.completions.create(model="target", messages=[*history, *_messages("and then")])  # type: ignore[arg-type]
    assert first.usage is not None and second.usage is not None
    timings = (second.model_extra or {})["timings"]
    assert timings["cache_n"] >= first.usage.prompt_tokens - 1
    assert timings["cache_n"] + timings["prompt_n"] == second.usage.prompt_tokens


def test_speculative_fields_set_the_draft_policy(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="target",
        messages=_messages(),  # type: ignore[arg-type]
        extra_body={"speculative.n_max": 3, "speculative.p_min": 0.5},
    )
    assert (reply.model_extra or {})["edge_spec"]["stages"][0]["lookahead"][
        "policy"
    ] == "fixed"  # pmin over ngram
    with pytest.raises(openai.BadRequestError, match="n_min"):
        client.chat.completions.create(
            model="target", messages=_messages(), extra_body={"speculative.n_min": 2}
        )  # type: ignore[arg-type]


def test_models_and_health(client: openai.OpenAI, server: Server, tiny_target: Path) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [tiny_target.name]
    tiers = (models[0].model_extra or {})["edge_spec"]["tiers"]
    assert tiers[-1] == {"role": "target", "model": tiny_target.name, "device": "CPU"}
    assert client.models.retrieve("target").id == tiny_target.name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "slots": 1, "busy": 0, "queued": 0}


# ---- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "says"),
    [
        ("/v1/chat/completions", b'{"messages": [', 400, "not valid JSON"),
        ("/v1/chat/completions", b"[1, 2]", 400, "JSON object"),
        ("/v1/chat/completions", b'{"messages": "hi"}', 400, "messages"),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}',
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}',
            400,
            "temperature",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "n": 2}',
            400,
            "n: is not supported",
        ),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}',
            404,
            "gpt-4",
        ),
        ("/v1/completions", b'{"prompt": 7}', 400, "prompt"),
        ("/v1/completions", json.dumps({"prompt": "hello " * 400}).encode(), 400, "context holds 256"),
        ("/v1/completions", b'{"prompt": "x", "padding": "' + b"x" * (4 * 1024 * 1024) + b'"}', 413, "over"),
        ("/v1/nothing", b"{}", 404, "Not Found"),
    ],
)
def test_bad_requests_get_openai_errors(
    server: Server, path: str, body: bytes, status: int, says: str
) -> None:
    response = httpx.post(f"{server.url}{path}", content=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and says in error["message"]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # still serving


def test_the_openai_client_sees_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=_messages())  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="target", prompt="hello " * 400)


def test_api_key(env: dict[str, str], tiny_target: Path) -> None:
    s = Server(["--target", tiny_target, "-n", 2, "--api-key", "s3cret"], env)
    try:
        for key in ("wrong", None):
            headers = {"authorization": f"Bearer {key}"} if key else {}
            response = httpx.get(f"{s.url}/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{s.url}/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=f"{s.url}/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model="target", messages=_messages()).usage.completion_tokens == 2  # type: ignore[arg-type, union-attr]
        assert httpx.get(f"{s.url}/health").status_code == 200  # no key needed
    finally:
        assert s.stop() == 0, s.stderr


def test_readme_curl_example(server: Server) -> None:
    lines = README.read_text().splitlines()
    start = next(
        i for i, line in enumerate(lines) if line.strip().startswith("curl http://127.0.0.1:8080/v1/chat")
    )
    command = [lines[start]]
    while command[-1].endswith("\\"):
        command.append(lines[start + len(command)])
    script = "\n".join(command).replace("http://127.0.0.1:8080", server.url)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"]


# ---- disconnects and shutdown --------------------------------------------------------------------------


def _start_stream(url: str, client: httpx.Client) -> tuple[httpx.Response, Iterator[str]]:
    """A streaming request under way (its first content chunk has arrived) and its remaining lines."""
    body = {"messages": _messages(), "stream": True}
    response = client.send(client.build_request("POST", f"{url}/v1/chat/completions", json=body), stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    while '"content": ""' in (line := next(lines)) or not line.startswith("data: "):
        pass  # the role chunk and blank separators
    return response, lines


def test_a_client_that_disconnects_frees_its_slot(env: dict[str, str], long_model: Path) -> None:
    s = _long_server(env, long_model)
    try:
        with httpx.Client(timeout=60) as http:
            response, _ = _start_stream(s.url, http)
            mark = len(s.lines)
            response.close()
            s.wait_line(r"slot 0: the client went away; generation stopped", after=mark)
            assert httpx.get(f"{s.url}/health").json()["busy"] == 0
            reply = http.post(f"{s.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 3})
            assert reply.json()["usage"]["completion_tokens"] == 3  # the one slot answers the next request
    finally:
        assert s.stop() == 0, s.stderr


def test_sigint_finishes_running_requests_refuses_new_ones_and_exits_0(
    env: dict[str, str], tiny_target: Path
) -> None:
    s = Server(["--target", tiny_target, "-n", 48], env)
    with httpx.Client(timeout=60) as http:
        _, lines = _start_stream(s.url, http)
        mark = len(s.lines)
        s.signal(signal.SIGINT)
        s.wait_line("shutting down: no new connections", after=mark)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{s.url}/health")
        rest = [line for line in lines if line]
        assert '"finish_reason": "length"' in rest[-2] and rest[-1] == "data: [DONE]"
    assert s.finish() == 0, s.stderr
    assert s.lines[-2:] == ["edge-spec: stopped", ""]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_stops_at_once(env: dict[str, str], long_model: Path, signum: int) -> None:
    s = _long_server(env, long_model)
    with httpx.Client(timeout=60) as http:
        _start_stream(s.url, http)
        mark = len(s.lines)
        s.signal(signum)
        s.wait_line("shutting down", after=mark)
        s.signal(signum)
        assert s.finish(timeout=30) == 128 + signum, s.stderr
    assert "stopped at once" in s.stderr and "Traceback" not in s.stderr


def test_serving_needs_no_web_stack_in_the_rest_of_the_package(
    tiny_target: Path, env: dict[str, str]
) -> None:
    """`import edge_spec`, the command line and a whole `run` import neither starlette nor uvicorn."""
    code = (
        "import sys\n"
        "import edge_spec, edge_spec.api, edge_spec.cli\n"
        "from click.testing import CliRunner\n"
        f"args = ['run', 'hi', '--target', {str(tiny_target)!r}, '-n', '2']\n"
        "result = CliRunner().invoke(edge_spec.cli.main, args)\n"
        "assert result.exit_code == 0, result.output\n"
        "web = ('starlette', 'uvicorn', 'edge_spec.server')\n"
        "print(sorted(m for m in sys.modules if m.startswith(web)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.real
def test_a_real_model_through_the_openai_client(env: dict[str, str]) -> None:
    """SmolLM2-135M: a sensible answer, the same text streamed and whole and as `run` gives it, and the
    next turn of the conversation read on top of the cached first one."""
    from edge_spec.models import DEFAULT_MODEL, fetch_carried

    model = fetch_carried(DEFAULT_MODEL)
    question = _messages("What is the capital of France? Answer in one sentence.")
    s = Server(["--target", model, "--ctx", 1024, "-n", 16], env)
    try:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        whole = client.chat.completions.create(model=model.name, messages=question)  # type: ignore[arg-type]
        text = whole.choices[0].message.content or ""
        assert "Paris" in text
        streamed = client.chat.completions.create(model=model.name, messages=question, stream=True)  # type: ignore[arg-type]
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
        history = [*question, {"role": "assistant", "content": text}, *_messages("And of Italy?")]
        second = client.chat.completions.create(model=model.name, messages=history)  # type: ignore[arg-type]
        assert whole.usage is not None and second.usage is not None
        assert (second.model_extra or {})["timings"]["cache_n"] >= whole.usage.prompt_tokens
        assert second.choices[0].message.content
    finally:
        assert s.stop() == 0, s.stderr
    run = subprocess.run(
        [
            *EDGE_SPEC,
            "run",
            question[0]["content"],
            "--target",
            str(model),
            "--ctx",
            "1024",
            "-n",
            "16",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=one_cpu,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["text"] == text
