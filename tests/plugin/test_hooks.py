"""The hook registry, in process."""

from __future__ import annotations

import kernel_checkpoint as kc
import pytest
from kernel_checkpoint._hooks import HookEvent, HookRegistry


@pytest.fixture(autouse=True)
def clean_registry():
    kc.registry.clear()
    yield
    kc.registry.clear()


def ev(kind="before_checkpoint"):
    return HookEvent(kind, "ckpt-20261126T101010Z-abc123", "lbl")


def test_order_then_registration():
    calls = []

    @kc.before_checkpoint
    def a():
        calls.append("a")

    @kc.before_checkpoint(order=-1)
    def b():
        calls.append("b")

    @kc.before_checkpoint
    def c():
        calls.append("c")

    @kc.before_checkpoint(priority=5)  # higher priority runs first: order -5
    def d():
        calls.append("d")

    res = kc.registry.run(ev())
    assert calls == ["d", "b", "a", "c"]
    assert res.errors == [] and res.veto is None and res.ran == 4
    assert a.__name__ == "a"  # decorators return the function


def test_kinds_are_separate_and_event_is_passed():
    seen = []

    @kc.on_resume
    def r(event):
        seen.append(("resume", event.kind, event.checkpoint_id, event.label))

    @kc.on_restart
    def s():
        seen.append(("restart",))

    kc.registry.run(ev())
    assert seen == []
    kc.registry.run(ev("on_resume"))
    kc.registry.run(ev("on_restart"))
    assert seen == [("resume", "on_resume", "ckpt-20261126T101010Z-abc123", "lbl"), ("restart",)]


def test_redefinition_replaces_in_place():
    calls = []
    reg = HookRegistry()

    def make(tag):
        def hook():
            calls.append(tag)

        hook.__qualname__ = "hook"
        hook.__module__ = "__main__"
        return hook

    def other():
        calls.append("other")

    other.__module__ = "__main__"
    reg.register("before_checkpoint", make("v1"))
    reg.register("before_checkpoint", other)
    reg.register("before_checkpoint", make("v2"))  # the cell defining hook ran again
    reg.run(ev())
    assert calls == ["v2", "other"]


def test_lambdas_are_not_deduplicated():
    calls = []
    reg = HookRegistry()
    reg.register("on_resume", lambda: calls.append(1))
    reg.register("on_resume", lambda: calls.append(2))
    reg.run(ev("on_resume"))
    assert calls == [1, 2]


def test_veto_stops_later_hooks():
    calls = []

    @kc.before_checkpoint
    def first():
        calls.append("first")

    @kc.before_checkpoint
    def refuse():
        raise kc.Veto("the GPU is busy")

    @kc.before_checkpoint
    def later():
        calls.append("later")

    res = kc.registry.run(ev())
    assert res.veto == "the GPU is busy"
    assert calls == ["first"]


def test_errors_are_reported_and_do_not_stop():
    calls, reports = [], []

    @kc.on_restart
    def broken():
        raise ValueError("file gone")

    @kc.on_restart
    def fine():
        calls.append("fine")

    @kc.on_restart
    def exits():
        raise SystemExit(3)

    @kc.on_restart
    def vetoes_too_late():
        raise kc.Veto("no")

    res = kc.registry.run(ev("on_restart"), report=reports.append)
    assert calls == ["fine"]
    assert res.veto is None
    assert len(res.errors) == 3
    assert res.errors[0].endswith("broken: ValueError: file gone")
    assert "SystemExit" in res.errors[1]
    assert "only meaningful in before_checkpoint" in res.errors[2]
    assert "Traceback" in reports[0] and "file gone" in reports[0]


def test_unregister_and_bad_arguments():
    @kc.on_resume
    def h():
        pass

    assert kc.registry.hooks("on_resume") == [h]
    assert kc.unregister_hook(h) is True
    assert kc.unregister_hook(h) is False
    assert kc.registry.hooks("on_resume") == []
    with pytest.raises(TypeError):
        kc.before_checkpoint(order=1, priority=2)
    with pytest.raises(ValueError):
        kc.registry.register("after_lunch", h)


def test_api_without_supervisor():
    with pytest.raises(kc.CheckpointError) as info:
        kc.checkpoint("x")
    assert info.value.code == "engine_unavailable"
    assert "not checkpointable" in str(info.value)
    assert kc.is_checkpointable() is False
