"""Unit tests for edge_spec.chat (no model)."""

from __future__ import annotations

import re

import pytest

from edge_spec.chat import FALLBACK_TEMPLATE, as_messages, render
from edge_spec.errors import ConfigError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-2 style: bos/eos tokens, a system prompt folded into the first user turn, raise_exception on
# roles that do not alternate.
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{% else %}{{ ' ' + content + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

USER = {"role": "user", "content": "Hi"}


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param([USER], "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", id="one user turn"),
        pytest.param(
            [{"role": "system", "content": "Be brief."}, USER, {"role": "assistant", "content": "Hello."}],
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>assistant\n",
            id="system, user, assistant",
        ),
    ],
)
def test_render_chatml(messages: list[dict[str, str]], expected: str) -> None:
    assert render(CHATML, messages) == expected


@pytest.mark.parametrize("template", [None, ""])
def test_fallback_template_used_without_a_template(template: str | None) -> None:
    messages = [{"role": "system", "content": "S"}, USER]
    expected = "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render(template, messages) == expected
    assert render(FALLBACK_TEMPLATE, messages) == expected
    assert render(template, messages) == render(CHATML, messages)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param([USER], "<s>[INST] Hi [/INST]", id="one user turn"),
        pytest.param(
            [{"role": "system", "content": "Be brief."}, USER, {"role": "assistant", "content": "Yo"}, USER],
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Yo </s><s>[INST] Hi [/INST]",
            id="system folded in, eos after the assistant turn",
        ),
    ],
)
def test_render_with_bos_eos_tokens(messages: list[dict[str, str]], expected: str) -> None:
    assert render(LLAMA2, messages, bos_text="<s>", eos_text="</s>") == expected


def test_bos_eos_default_to_empty() -> None:
    assert render(LLAMA2, [USER, {"role": "assistant", "content": "Yo"}]) == "[INST] Hi [/INST] Yo "


def test_raise_exception_becomes_config_error_mentioning_raw() -> None:
    with pytest.raises(ConfigError, match="roles must alternate") as info:
        render(LLAMA2, [USER, USER], bos_text="<s>")
    assert "--raw" in str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("{% for m in messages %}{{ m['content'] }}", id="syntax error"),
        pytest.param("{{ nothing_here.attribute }}", id="undefined variable"),
        pytest.param("{{ messages.append(1) }}", id="sandbox: immutable messages"),
        pytest.param("{{ raise_exception('no tools') }}", id="raise_exception"),
    ],
)
def test_failing_templates_raise_config_error(template: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("--raw")):
        render(template, [USER])


def test_trim_and_lstrip_blocks_like_hugging_face() -> None:
    template = (
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'user' %}\n"
        "{{ m['content'] }}\n"
        "    {% endif %}\n"
        "{% endfor %}"
    )
    messages = [USER, {"role": "assistant", "content": "x"}, {"role": "user", "content": "Bye"}]
    assert render(template, messages) == "Hi\nBye\n"


def test_template_globals_and_generation_prompt_flag() -> None:
    out = render("{{ strftime_now('%Y') }}|{{ add_generation_prompt }}|{{ messages | length }}", [USER, USER])
    year, flag, count = out.split("|")
    assert re.fullmatch(r"\d{4}", year)
    assert (flag, count) == ("True", "2")


def test_render_does_not_mutate_messages() -> None:
    messages = [dict(USER)]
    render(CHATML, messages)
    assert messages == [USER]


# --- as_messages ----------------------------------------------------------------------------------


def test_as_messages_wraps_a_string_as_one_user_message() -> None:
    assert as_messages("Tell me a joke") == [{"role": "user", "content": "Tell me a joke"}]
    assert as_messages("") == [{"role": "user", "content": ""}]


@pytest.mark.parametrize("container", [list, tuple])
def test_as_messages_checks_and_copies_a_message_list(container: type) -> None:
    original = [{"role": "system", "content": "S"}, dict(USER)]
    got = as_messages(container(original))
    assert got == original
    assert isinstance(got, list)
    assert all(a is not b for a, b in zip(got, original, strict=True))
    got[0]["content"] = "changed"
    assert original[0]["content"] == "S"


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        pytest.param([], "empty", id="empty list"),
        pytest.param([{"role": "user"}], "'content'", id="missing content"),
        pytest.param([{"content": "hi"}], "'role'", id="missing role"),
        pytest.param([{"role": "user", "content": None}], "'content'", id="content None"),
        pytest.param([{"role": 1, "content": "hi"}], "'role'", id="role not a string"),
        pytest.param([USER, {"role": "assistant", "content": ["a", "b"]}], "'content'", id="list content"),
    ],
)
def test_as_messages_rejects_invalid_messages(messages: list[dict[str, object]], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        as_messages(messages)  # type: ignore[arg-type]


@pytest.mark.parametrize("messages", [["hi"], [1], [None]], ids=["str item", "int item", "None item"])
def test_as_messages_rejects_non_dict_items_with_config_error(messages: list[object]) -> None:
    with pytest.raises(ConfigError):
        as_messages(messages)  # type: ignore[arg-type]


# --- Hugging Face compatibility gaps (transformers adds jinja2.ext.loopcontrols and its own tojson) -----


def test_loop_controls_like_hugging_face() -> None:
    template = (
        "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    assert render(template, [USER, {"role": "assistant", "content": "x"}]) == "Hi"


def test_tojson_like_hugging_face() -> None:
    message = {"role": "user", "content": "<é & '>"}
    assert render("{{ messages[0] | tojson }}", [message]) == '{"role": "user", "content": "<é & \'>"}'
