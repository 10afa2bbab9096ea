"""What the LLM is sent: newest turns within the budget, the image list always."""

from __future__ import annotations

from core import history
from core.store import ImageRow, Store


def test_old_turns_are_dropped_but_the_image_list_stays(tmp_path):
    store = Store(tmp_path / "bot.db")
    store.add_image(ImageRow("s", "img1", "ab/x.png", "x", None, "upload", {"filename": "dog.jpg"}, 512, 384, "RGB",
                             "a dog on grass"))
    for i in range(50):
        store.add_message("s", "user", f"message {i} " + "words " * 40)
        store.add_message("s", "assistant", f"answer {i}")
    msgs = history.build(store, "s", store.images("s"), budget=1000)
    assert msgs[0]["role"] == "system"
    assert "- img1: 512x384, uploaded, shows: a dog on grass" in msgs[0]["content"]
    assert msgs[-1]["content"] == "answer 49" and msgs[-2]["content"].startswith("message 49 ")
    assert not any(m["content"].startswith("message 0 ") for m in msgs[1:])
    assert sum(len(m["content"]) for m in msgs) // 4 <= 1000
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * ((len(msgs) - 1) // 2)  # whole turns


def test_the_newest_turn_is_kept_even_over_budget(tmp_path):
    store = Store(tmp_path / "bot.db")
    store.add_message("s", "user", "x " * 5000)
    msgs = history.build(store, "s", [], budget=100)
    assert len(msgs) == 2 and "- none yet" in msgs[0]["content"]


def test_tool_calls_without_results_are_not_sent(tmp_path):
    """A crash between a tool call and its result must not poison the conversation."""
    store = Store(tmp_path / "bot.db")
    store.add_message("s", "user", "draw a cat")
    call = {"id": "c1", "type": "function", "function": {"name": "generate_image", "arguments": "{}"}}
    store.add_message("s", "assistant", None, tool_calls=[call])  # then the bot died
    store.add_message("s", "user", "hello again")
    msgs = history.build(store, "s", [], budget=5000)
    assert [m["role"] for m in msgs] == ["system", "user", "user"]
    assert all("tool_calls" not in m for m in msgs)


def test_tool_results_follow_their_calls(tmp_path):
    store = Store(tmp_path / "bot.db")
    store.add_message("s", "user", "draw a cat")
    call = {"id": "c1", "type": "function", "function": {"name": "generate_image", "arguments": '{"prompt":"cat"}'}}
    store.add_message("s", "assistant", None, tool_calls=[call])
    store.add_message("s", "tool", "Drew img1", tool_call_id="c1", name="generate_image")
    store.add_message("s", "assistant", "Here: img1")
    msgs = history.build(store, "s", [], budget=5000)
    assert msgs[2] == {"role": "assistant", "content": "", "tool_calls": [call]}  # never null: servers 500 on it
    assert msgs[3] == {"role": "tool", "tool_call_id": "c1", "content": "Drew img1"}
