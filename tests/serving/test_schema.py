"""The request models: the plain OpenAI request, the `stars` extension on a subclass, and precedence.

(The 400s each field gets over HTTP are pinned in test_api.py and test_client_errors.py.)
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stars_guard.serving.errors import OpenAIError
from stars_guard.serving.schema import ChatCompletionRequest, StarsChatCompletionRequest, parse_chat_request
from tests.serving.doubles import test_config

USER = [{"role": "user", "content": "Hello"}]


def test_the_stars_extension_is_a_field_of_the_subclass_only():
    assert issubclass(StarsChatCompletionRequest, ChatCompletionRequest)
    assert "stars" in StarsChatCompletionRequest.model_fields and "stars" not in ChatCompletionRequest.model_fields
    plain = ChatCompletionRequest.model_validate({"messages": USER, "metadata": {}})  # empty: asks for nothing
    assert not hasattr(plain, "stars")
    with pytest.raises(ValidationError, match="Unrecognized request argument supplied: stars"):
        ChatCompletionRequest.model_validate({"messages": USER, "stars": {"segment_size": 4}})
    extended = StarsChatCompletionRequest.model_validate({"messages": USER, "stars": {"segment_size": 4}})
    assert extended.stars == {"segment_size": 4}


def test_messages_become_engine_turns():
    request = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": None},
                {"role": "user", "content": "three"},
            ],
            "stop": "x",
        }
    )
    assert [(turn.role, turn.content) for turn in request.turns()] == [
        ("system", "Be brief."),
        ("user", "one\ntwo"),
        ("assistant", ""),
        ("user", "three"),
    ]
    assert request.stop_strings() == ["x"]


def test_null_is_absent_and_max_completion_tokens_wins_without_max_tokens_being_read():
    request = parse_chat_request(
        {"messages": USER, "model": None, "stream": None, "max_completion_tokens": 3, "max_tokens": "ignored"},
        test_config(),
    )
    assert (request.config.max_new_tokens, request.stream, request.model) == (3, False, None)


def test_shape_errors_come_before_the_override_policy():
    # Both are wrong: the shape of `temperature`, and a locked `stars` field. Shape is judged first.
    with pytest.raises(OpenAIError) as raised:
        parse_chat_request({"messages": USER, "temperature": "hot", "stars": {"beta": 1.0}}, test_config())
    assert (raised.value.param, raised.value.code) == ("temperature", None)
    with pytest.raises(OpenAIError) as raised:
        parse_chat_request({"messages": USER, "stars": {"beta": 1.0}}, test_config())
    assert (raised.value.param, raised.value.code) == ("stars.beta", "locked_parameter")
