#!/usr/bin/env python3
"""End-to-end check of keygate with the official OpenAI and Anthropic Python SDKs.

Install the pinned SDKs into a virtualenv outside the repository, then point the
script at a running gateway (or straight at a mock upstream):

    python3 -m venv /tmp/sdkvenv
    /tmp/sdkvenv/bin/pip install -r tests/sdk/requirements.txt
    KEYGATE_E2E_BASE=http://127.0.0.1:8080 KEYGATE_E2E_KEY=kg_sk_... \\
    KEYGATE_E2E_CHAT_MODEL=gpt-4o-mini KEYGATE_E2E_EMBED_MODEL=text-embedding-3-small \\
    KEYGATE_E2E_CLAUDE_MODEL=claude-haiku-4-5 \\
    KEYGATE_E2E_REPLY="The quick brown fox jumps over the lazy dog." \\
    /tmp/sdkvenv/bin/python tests/sdk/e2e.py

Environment:
    KEYGATE_E2E_BASE          base URL without /v1; the OpenAI client uses BASE/v1,
                              the Anthropic client BASE
    KEYGATE_E2E_KEY           a valid key
    KEYGATE_E2E_CHAT_MODEL    an OpenAI-style chat model the key may use
    KEYGATE_E2E_EMBED_MODEL   an embeddings model the key may use
    KEYGATE_E2E_CLAUDE_MODEL  an Anthropic model the key may use
    KEYGATE_E2E_REPLY         the reply text the upstream sends
    KEYGATE_E2E_ERRORS        set to 1 to also check the gateway's own errors
                              (wrong key, unknown model)

Prints one line per check and exits 0 when all pass, 1 on the first failure,
2 when the environment is incomplete or the SDKs are missing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

try:
    import anthropic
    import openai
except ImportError as e:
    print(f"error: {e}; install tests/sdk/requirements.txt first", file=sys.stderr)
    sys.exit(2)

# A key with the gateway's shape that no gateway issued.
WRONG_KEY = "kg_sk_" + "0" * 72
# Generous, but a hung request must not hang the script.
TIMEOUT_SECONDS = 30.0


class CheckFailed(Exception):
    """A check saw something other than what it expected."""


@dataclass(frozen=True)
class Config:
    base: str
    key: str
    chat_model: str
    embed_model: str
    claude_model: str
    reply: str
    errors: bool

    @staticmethod
    def from_env() -> Config:
        names = [
            "KEYGATE_E2E_BASE",
            "KEYGATE_E2E_KEY",
            "KEYGATE_E2E_CHAT_MODEL",
            "KEYGATE_E2E_EMBED_MODEL",
            "KEYGATE_E2E_CLAUDE_MODEL",
            "KEYGATE_E2E_REPLY",
        ]
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            print(f"error: set {', '.join(missing)}", file=sys.stderr)
            sys.exit(2)
        return Config(
            base=os.environ["KEYGATE_E2E_BASE"].rstrip("/"),
            key=os.environ["KEYGATE_E2E_KEY"],
            chat_model=os.environ["KEYGATE_E2E_CHAT_MODEL"],
            embed_model=os.environ["KEYGATE_E2E_EMBED_MODEL"],
            claude_model=os.environ["KEYGATE_E2E_CLAUDE_MODEL"],
            reply=os.environ["KEYGATE_E2E_REPLY"],
            errors=os.environ.get("KEYGATE_E2E_ERRORS") == "1",
        )

    def openai(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.base + "/v1",
            api_key=key or self.key,
            max_retries=0,
            timeout=TIMEOUT_SECONDS,
        )

    def anthropic(self, key: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.base,
            api_key=key or self.key,
            max_retries=0,
            timeout=TIMEOUT_SECONDS,
        )


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def expect_equal(actual: Any, expected: Any, what: str) -> None:
    expect(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


CHAT_MESSAGES = [
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": "Say the usual sentence."},
]
ANTHROPIC_MESSAGES = [{"role": "user", "content": "Say the usual sentence."}]


def chat_non_stream(cfg: Config) -> None:
    completion = cfg.openai().chat.completions.create(
        model=cfg.chat_model, messages=CHAT_MESSAGES
    )
    expect(len(completion.choices) == 1, f"expected one choice, got {completion.choices!r}")
    expect_equal(completion.choices[0].message.content, cfg.reply, "content")
    expect_equal(completion.choices[0].finish_reason, "stop", "finish_reason")
    usage = completion.usage
    expect(usage is not None, "no usage in the completion")
    assert usage is not None
    expect(usage.prompt_tokens > 0, f"prompt_tokens is {usage.prompt_tokens}")
    expect(usage.completion_tokens > 0, f"completion_tokens is {usage.completion_tokens}")
    expect_equal(
        usage.total_tokens, usage.prompt_tokens + usage.completion_tokens, "total_tokens"
    )


def stream_text(chunks: list[Any]) -> tuple[str, int]:
    """The concatenated delta content of a chat stream and how many chunks had some."""
    pieces = [
        chunk.choices[0].delta.content
        for chunk in chunks
        if chunk.choices and chunk.choices[0].delta.content
    ]
    return "".join(pieces), len(pieces)


def chat_stream(cfg: Config) -> None:
    stream = cfg.openai().chat.completions.create(
        model=cfg.chat_model, messages=CHAT_MESSAGES, stream=True
    )
    chunks = list(stream)
    text, content_chunks = stream_text(chunks)
    expect_equal(text, cfg.reply, "streamed content")
    expect(content_chunks > 1, f"expected several content chunks, got {content_chunks}")
    expect(
        any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks),
        "no chunk with finish_reason stop",
    )
    expect(
        all(c.usage is None for c in chunks),
        "a usage chunk arrived without stream_options.include_usage",
    )
    expect(all(c.choices for c in chunks), "a chunk without choices arrived unasked")


def chat_stream_usage(cfg: Config) -> None:
    stream = cfg.openai().chat.completions.create(
        model=cfg.chat_model,
        messages=CHAT_MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text, _ = stream_text(chunks)
    expect_equal(text, cfg.reply, "streamed content")
    expect(len(chunks) > 0, "empty stream")
    last = chunks[-1]
    expect(last.usage is not None, "the last chunk carries no usage")
    assert last.usage is not None
    expect_equal(last.choices, [], "choices of the usage chunk")
    expect(last.usage.prompt_tokens > 0, f"prompt_tokens is {last.usage.prompt_tokens}")
    expect(
        last.usage.completion_tokens > 0,
        f"completion_tokens is {last.usage.completion_tokens}",
    )


def embeddings(cfg: Config) -> None:
    # The SDK asks for base64 unless told otherwise and decodes it to floats.
    inputs = ["hello world", "a second input"]
    result = cfg.openai().embeddings.create(model=cfg.embed_model, input=inputs)
    expect_equal(len(result.data), len(inputs), "number of embeddings")
    for index, item in enumerate(result.data):
        expect_equal(item.index, index, "embedding index")
        vector = item.embedding
        expect(
            isinstance(vector, list) and len(vector) > 0,
            f"embedding {index} is not a non-empty list: {type(vector).__name__}",
        )
        expect(
            all(isinstance(x, float) for x in vector),
            f"embedding {index} holds non-floats",
        )
    expect(result.usage.prompt_tokens > 0, f"prompt_tokens is {result.usage.prompt_tokens}")


def models_list(cfg: Config) -> None:
    ids = [model.id for model in cfg.openai().models.list()]
    expect(cfg.chat_model in ids, f"{cfg.chat_model!r} not among the models {ids!r}")


def anthropic_non_stream(cfg: Config) -> None:
    message = cfg.anthropic().messages.create(
        model=cfg.claude_model, max_tokens=256, messages=ANTHROPIC_MESSAGES
    )
    text = "".join(block.text for block in message.content if block.type == "text")
    expect_equal(text, cfg.reply, "message text")
    expect_equal(message.stop_reason, "end_turn", "stop_reason")
    expect(message.usage.input_tokens > 0, f"input_tokens is {message.usage.input_tokens}")
    expect(message.usage.output_tokens > 0, f"output_tokens is {message.usage.output_tokens}")


def anthropic_stream(cfg: Config) -> None:
    with cfg.anthropic().messages.stream(
        model=cfg.claude_model, max_tokens=256, messages=ANTHROPIC_MESSAGES
    ) as stream:
        deltas = list(stream.text_stream)
        final = stream.get_final_message()
    expect_equal("".join(deltas), cfg.reply, "streamed text")
    expect(len(deltas) > 1, f"expected several text deltas, got {len(deltas)}")
    final_text = "".join(block.text for block in final.content if block.type == "text")
    expect_equal(final_text, cfg.reply, "final message text")
    expect_equal(final.stop_reason, "end_turn", "stop_reason")
    expect(final.usage.input_tokens > 0, f"input_tokens is {final.usage.input_tokens}")
    expect(final.usage.output_tokens > 0, f"output_tokens is {final.usage.output_tokens}")


def error_code(error: openai.APIStatusError) -> Any:
    """The OpenAI error code, from the exception or its body."""
    if error.code is not None:
        return error.code
    body = error.body
    return body.get("code") if isinstance(body, dict) else None


def wrong_key(cfg: Config) -> None:
    try:
        cfg.openai(WRONG_KEY).chat.completions.create(
            model=cfg.chat_model, messages=CHAT_MESSAGES
        )
    except openai.AuthenticationError as e:
        expect_equal(e.status_code, 401, "status")
        expect_equal(error_code(e), "invalid_api_key", f"error code (body {e.body!r})")
        return
    raise CheckFailed("a wrong key was accepted")


def unknown_model(cfg: Config) -> None:
    try:
        cfg.openai().chat.completions.create(model="no-such-model", messages=CHAT_MESSAGES)
    except openai.NotFoundError as e:
        expect_equal(e.status_code, 404, "status")
        expect_equal(error_code(e), "model_not_found", f"error code (body {e.body!r})")
        return
    raise CheckFailed("an unknown model was accepted")


def anthropic_wrong_key(cfg: Config) -> None:
    try:
        cfg.anthropic(WRONG_KEY).messages.create(
            model=cfg.claude_model, max_tokens=16, messages=ANTHROPIC_MESSAGES
        )
    except anthropic.AuthenticationError as e:
        expect_equal(e.status_code, 401, "status")
        return
    raise CheckFailed("a wrong key was accepted")


CHECKS: list[tuple[str, Callable[[Config], None]]] = [
    ("chat non-stream", chat_non_stream),
    ("chat stream", chat_stream),
    ("chat stream with usage", chat_stream_usage),
    ("embeddings", embeddings),
    ("models list", models_list),
    ("anthropic messages non-stream", anthropic_non_stream),
    ("anthropic messages stream", anthropic_stream),
]
ERROR_CHECKS: list[tuple[str, Callable[[Config], None]]] = [
    ("wrong key is 401 invalid_api_key", wrong_key),
    ("unknown model is 404 model_not_found", unknown_model),
    ("anthropic wrong key is 401", anthropic_wrong_key),
]


def main() -> int:
    cfg = Config.from_env()
    print(f"sdk  openai {openai.__version__}, anthropic {anthropic.__version__} -> {cfg.base}")
    checks = CHECKS + (ERROR_CHECKS if cfg.errors else [])
    for name, run in checks:
        try:
            run(cfg)
        except CheckFailed as e:
            print(f"FAIL {name}: {e}", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001 - any SDK error fails the check
            print(f"FAIL {name}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        print(f"ok   {name}")
    print(f"all {len(checks)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
