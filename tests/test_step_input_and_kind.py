"""Smaller gaps of #19: a later step reads `{{ steps.x.input }}` (the rendered input,
secrets masked), and each step of a run document says its `kind`."""

from __future__ import annotations

from tests.exec_support import by_id, run_yaml

FLOW = """
    secrets: [API_TOKEN]
    params: {who: {type: string, default: ada}}
    steps:
      - id: request
        set: {url: "https://api.example.com/users/{{ params.who }}", auth: "Bearer {{ secrets.API_TOKEN }}"}
      - id: each
        foreach: [1, 2]
        log: "item {{ item }} for {{ params.who }}"
      - id: echo
        set:
          sent: "{{ steps.request.input }}"
          items: "{{ steps.each.input }}"
        compensate: {log: undo}
    finally:
      - id: bye
        run: echo bye
"""


async def test_later_steps_read_the_rendered_input_with_secrets_masked(engine, tmp_path) -> None:
    engine.environ = {"API_TOKEN": "tok-s3cret-value"}
    exe, doc = await run_yaml(engine, tmp_path, FLOW)
    assert doc["status"] == "succeeded", doc["error"]
    out = by_id(doc)["echo"]["output"]
    assert out["sent"] == {"set": {"url": "https://api.example.com/users/ada", "auth": "Bearer ***"}}
    assert out["items"] == [{"log": "item 1 for ada"}, {"log": "item 2 for ada"}]
    assert "tok-s3cret-value" not in str(doc)


async def test_each_step_of_a_run_document_has_its_kind(engine, tmp_path) -> None:
    engine.environ = {"API_TOKEN": "x"}
    exe, doc = await run_yaml(engine, tmp_path, FLOW)
    assert {s["id"]: s["kind"] for s in doc["steps"]} == {"request": "set", "each": "log", "echo": "set",
                                                          "bye": "run"}
