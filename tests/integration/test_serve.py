"""`memreg serve` end to end: `python -m memreg serve` in its own process on 127.0.0.1, answered over
real HTTP by the `openai` client (and urllib for the raw error bodies), on tiny real models.

Two servers: a saved composition folder whose memory has weight 0 (its answers must be the base's
own greedy output), and a base with `-m FOLDER=0.9` composed at start (its answers must be the
composition's own greedy output in this process, and differ from the base's).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import torch  # noqa: F401  (a missing dependency must fail, not skip)

from conftest import REPO, free_port, memreg_cli
from tiny_lms import LICENSES, STDLIB, gpt2, real_text, save_package, train_tokenizer

openai = pytest.importorskip("openai", reason="the serve extra: pip install 'memreg[serve]'")

pytestmark = pytest.mark.slow  # each server imports torch and loads its models in a fresh process

# ChatML, as Qwen2 and SmolLM2-Instruct ship it
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
          "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
PROMPT = "Everyone is permitted to copy"
NEW = 12
STARTUP_S = 300  # importing torch and loading the members in a fresh process, on a loaded machine


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import memreg

    root = tmp_path_factory.mktemp("serve")
    tok = train_tokenizer(real_text(LICENSES))
    tok.chat_template = CHATML
    v = len(tok)
    base = save_package(gpt2(v, 0), tok, root / "base")
    mem = save_package(gpt2(v, 1), tok, root / "law")
    other = save_package(gpt2(v, 5), train_tokenizer(real_text(STDLIB), vocab_size=v), root / "pymem")
    composition = root / "law-at-0"
    memreg.compose(str(base), [str(mem)], [0.0]).save_pretrained(composition)
    return {"root": root, "base": base, "mem": mem, "other": other, "composition": composition, "tok": tok}


class Server:
    """`memreg serve ARGS` on a free port of 127.0.0.1, up once /health answers."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "memreg", "serve", *args, "--port", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"memreg serve exited ({self.proc.returncode}):\n{log.read_text()}")
            try:
                if request(f"{self.url}/health", timeout=2) == (200, {"status": "ok"}):
                    return
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"memreg serve did not answer /health within {STARTUP_S} s:\n{log.read_text()}")

    def client(self):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=300)

    def stop(self) -> None:
        self.proc.terminate()  # uvicorn shuts down on SIGTERM
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def at_zero(world, tmp_path_factory):
    server = Server([str(world["composition"]), "--name", "law-at-0"], tmp_path_factory.mktemp("log") / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def composed_now(world, tmp_path_factory):
    server = Server([str(world["base"]), "-m", f"{world['mem']}=0.9"], tmp_path_factory.mktemp("log") / "serve.log")
    yield server
    server.stop()


def request(url: str, body: dict | None = None, timeout: float = 300) -> tuple[int, dict]:
    """GET (or POST `body` as JSON): the status and the JSON body, of an error too."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())  # a body that is not JSON fails the test here


def greedy(model, tok, ids: list[int], new: int = NEW) -> str:
    """`model.generate` greedy in this process: the oracle the server is held to."""
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def base_greedy(world, ids: list[int]) -> str:
    from transformers import AutoModelForCausalLM

    return greedy(AutoModelForCausalLM.from_pretrained(world["base"]).eval(), world["tok"], ids)


def complete(client, model: str, prompt: str = PROMPT, **kw) -> str:
    return client.completions.create(model=model, prompt=prompt, max_tokens=NEW, temperature=0, **kw).choices[0].text


def test_models_lists_the_composition_alone(at_zero):
    models = at_zero.client().models.list().data
    assert [m.id for m in models] == ["law-at-0"]


def test_completion_with_the_memory_at_weight_0_is_the_bases_greedy_output(world, at_zero):
    text = complete(at_zero.client(), "law-at-0")
    assert text and text == base_greedy(world, world["tok"](PROMPT)["input_ids"])


def test_chat_uses_the_base_tokenizers_chat_template(world, at_zero):
    messages = [{"role": "user", "content": "May I copy this licence?"}]
    reply = at_zero.client().chat.completions.create(model="law-at-0", messages=messages, max_tokens=NEW, temperature=0)
    ids = world["tok"].apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert reply.choices[0].message.content == base_greedy(world, ids)
    assert reply.usage.prompt_tokens == len(ids)  # the templated prompt, not the bare content


def _same_text_as(streamed: str, whole: str) -> bool:
    """A stream decodes token by token and holds back bytes that do not yet form a character; the
    tiny models emit stray UTF-8 bytes, so a reply may end in U+FFFD that the stream never sent."""
    return streamed == whole or (whole.startswith(streamed) and set(whole[len(streamed):]) == {"\ufffd"})


def test_streaming_yields_the_same_text_as_one_reply(at_zero):
    client = at_zero.client()
    whole = complete(client, "law-at-0")
    chunks = list(client.completions.create(model="law-at-0", prompt=PROMPT, max_tokens=NEW, temperature=0, stream=True))
    assert len(chunks) > 2 and _same_text_as("".join(c.choices[0].text for c in chunks), whole)
    messages = [{"role": "user", "content": "Who may copy it?"}]
    reply = client.chat.completions.create(model="law-at-0", messages=messages, max_tokens=NEW, temperature=0)
    stream = client.chat.completions.create(model="law-at-0", messages=messages, max_tokens=NEW, temperature=0, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert _same_text_as(streamed, reply.choices[0].message.content)


def test_two_concurrent_requests_both_answer_as_they_do_alone(at_zero):
    client = at_zero.client()
    prompts = ["Everyone is permitted to copy", "This program is free software"]
    alone = [complete(client, "law-at-0", p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda p: complete(client, "law-at-0", p), prompts))
    assert together == alone and alone[0] != alone[1]


def test_a_memory_with_weight_composed_at_start_is_served(world, composed_now):
    import memreg

    ids = world["tok"](PROMPT)["input_ids"]
    mine = greedy(memreg.compose(str(world["base"]), [str(world["mem"])], [0.9]), world["tok"], ids)
    served = composed_now.client()
    assert [m.id for m in served.models.list().data] == ["base+law"]
    text = complete(served, "base+law")
    assert text == mine and text != base_greedy(world, ids)  # the memory is in the mixture


def test_a_request_without_a_limit_stops_at_the_context(at_zero):
    """transformers would ask for 1024 new tokens: past the 256 positions of these models."""
    reply = at_zero.client().completions.create(model="law-at-0", prompt=PROMPT)
    assert 0 < reply.usage.completion_tokens and reply.usage.total_tokens <= 256


@pytest.mark.parametrize("path, body, status, says", [
    ("/v1/chat/completions", {"max_tokens": 3}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hello"}, 400, ""),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": 300}, 400, "context of 256"),
    ("/v1/completions", {"prompt": PROMPT, "max_tokens": -1}, 400, "max_new_tokens"),
    ("/v1/completions", {"prompt": PROMPT, "model": "gpt-4"}, 400, "pinned"),
    ("/v1/completions", {"prompt": PROMPT, "temperature_typo": 1}, 422, "temperature_typo"),
])
def test_bad_requests_get_4xx_json_errors(at_zero, path, body, status, says):
    code, answer = request(at_zero.url + path, body)  # JSON, never a bare "Internal Server Error"
    assert code == status and says in json.dumps(answer)


def test_an_unknown_memory_is_one_clear_error(world, tmp_path):
    from memreg.registry import Registry

    Registry.init(str(tmp_path / "registry"))
    proc = memreg_cli("serve", str(world["base"]), "-m", "nosuch=0.5", "--registry", str(tmp_path / "registry"),
                      "--port", str(free_port()), timeout=300)
    assert proc.returncode == 1 and "nosuch" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_memory_of_another_tokenizer_is_refused(world):
    proc = memreg_cli("serve", str(world["base"]), "-m", f"{world['other']}=0.5", "--port", str(free_port()), timeout=300)
    assert proc.returncode == 1 and "tokenizer" in proc.stderr and "--force" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_folder_is_one_clear_error(tmp_path):
    proc = memreg_cli("serve", str(tmp_path / "nothing-here"), "--port", str(free_port()), timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: {tmp_path / 'nothing-here'} is not a folder: give a saved composition folder, or a base with -m REF=WEIGHT")


def test_without_the_serving_extra_the_error_names_the_pip_command(world, monkeypatch, capsys):
    from transformers.utils import import_utils

    from conftest import memreg_in_process

    monkeypatch.setattr(import_utils, "is_serve_available", lambda: False)
    code, _, err = memreg_in_process(monkeypatch, capsys, "serve", str(world["composition"]))
    assert code == 1 and "pip install 'memreg[serve]'" in err
