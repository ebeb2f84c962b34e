"""The program API: checkpoint(), restore(), fork(), bisect(), list_checkpoints(), delete(),
label(), status().

Stdlib only at import; the agent (and zmq) is loaded by the IPython extension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ._errors import NOT_CHECKPOINTABLE, CheckpointError

if TYPE_CHECKING:
    from ._agent import Agent, CheckpointResult
    from ._fork import Fork

_agent: Agent | None = None


def _set_agent(agent: Agent | None) -> None:
    global _agent
    _agent = agent


def _require_agent() -> Agent:
    if _agent is None:
        raise CheckpointError("engine_unavailable", NOT_CHECKPOINTABLE)
    return _agent


def is_checkpointable() -> bool:
    """Whether this kernel runs under the checkpoint supervisor (the extension is loaded and
    its agent channel is up)."""
    return _agent is not None


def _require_id(checkpoint_id: Any) -> str:
    if not isinstance(checkpoint_id, str) or not checkpoint_id.strip():
        raise CheckpointError("invalid_request", "give the id of a checkpoint (ckpt-...)")
    return checkpoint_id.strip()


def checkpoint(label: str | None = None) -> CheckpointResult:
    """Checkpoint this kernel and return once the snapshot is taken.

    It returns twice, in a sense, like DMTCP's ``dmtcp.checkpoint()``: in the process that was
    checkpointed, after the supervisor's reply, with ``resumed=True`` and the manifest in
    ``.checkpoint``; and in every process later restored from this image, with
    ``restarted=True``. So a loop that checkpoints every N iterations continues, after a
    restore, from the iteration that took the checkpoint::

        for step in range(start, 10_000):
            train(step)
            if step % 500 == 0:
                r = kernel_checkpoint.checkpoint(f"step {step}")
                if r.restarted:
                    print("restored at step", step)

    Raises :class:`CheckpointError` (``.code`` e.g. ``vetoed``, ``busy``, ``engine_failed``,
    ``no_space``) when no checkpoint was made. Call it from the kernel's code (a cell, a
    magic, a thread), never from a checkpoint hook.
    """
    from ._agent import CheckpointResult

    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str or None, not {type(label).__name__}")
    pending = _require_agent().request("checkpoint", label=label)
    reply = pending.reply or {}
    if pending.restarted:
        cid = pending.checkpoint_id or reply.get("current_id") or ""
        return CheckpointResult(cid, label, None, resumed=False, restarted=True)
    manifest = reply.get("checkpoint")
    cid = (manifest or {}).get("id") or reply.get("current_id") or pending.checkpoint_id or ""
    got_label = (manifest or {}).get("label", label)
    return CheckpointResult(cid, got_label, manifest, resumed=True, restarted=False)


def restore(checkpoint_id: str) -> dict[str, Any] | None:
    """Replace this kernel by one restored from checkpoint ``checkpoint_id``.

    The supervisor stops this kernel process, so normally this call never returns here:
    execution continues in the restored process, where the code that took that checkpoint
    sees ``restarted=True``. Raises :class:`CheckpointError` (``unknown_checkpoint``,
    ``corrupt_image``, ``foreign_image``, ...) when nothing was changed.
    """
    pending = _require_agent().request("restore", checkpoint_id=_require_id(checkpoint_id))
    return (pending.reply or {}).get("checkpoint")


def fork_connection_file(
    checkpoint_id: str, ends_with_kernel: bool = False
) -> tuple[str, dict[str, Any] | None]:
    """Has the supervisor start a new standalone kernel from checkpoint ``checkpoint_id``,
    beside this one; returns its connection file and the checkpoint's manifest. With
    ``ends_with_kernel``, the fork ends when this kernel's supervisor does (this kernel's shutdown,
    or a crash of the supervisor); otherwise it lives on until its own shutdown_request."""
    pending = _require_agent().request(
        "fork", checkpoint_id=_require_id(checkpoint_id), ends_with_kernel=bool(ends_with_kernel)
    )
    reply = pending.reply or {}
    return reply["connection_file"], reply.get("checkpoint")


def fork(checkpoint_id: str, *, ends_with_kernel: bool = True) -> Fork:
    """A new kernel started from checkpoint ``checkpoint_id`` beside this one (this kernel is
    not touched): a handle whose ``.execute(code)`` runs code there and returns the value of
    its last expression, and ``.shutdown()`` ends it; as a context manager, it ends with the
    block::

        with kernel_checkpoint.fork(ckpt) as f:
            before = f.execute("model.score(x)")

    The fork belongs to this kernel: it also ends when this kernel shuts down or its supervisor
    dies, so a forgotten handle leaves nothing running. ``ends_with_kernel=False`` makes it a
    kernel of its own (as ``%checkpoint fork`` does), which lives on until its shutdown.

    Raises :class:`CheckpointError` (``unknown_checkpoint``, ``corrupt_image``,
    ``engine_unavailable``, ...) when no fork was started.
    """
    from ._fork import Fork

    connection_file, manifest = fork_connection_file(checkpoint_id, ends_with_kernel)
    return Fork(connection_file, manifest)


def bisect_search(
    expression: str,
    from_id: str | None = None,
    to_id: str | None = None,
    parallel: int | None = None,
    trace: bool = False,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The supervisor's whole answer to a bisect request (protocol Reply: ``bisect`` is the
    BisectResult, ``checkpoint`` the answer's manifest when there is one). See :func:`bisect`."""
    if not isinstance(expression, str) or not expression.strip():
        raise CheckpointError("invalid_request", "give the expression to look for, e.g. 'x > 3'")
    try:
        compile(expression.strip(), "<bisect expression>", "eval")
    except SyntaxError as exc:
        raise CheckpointError(
            "invalid_request", f"{expression.strip()!r} is not a Python expression: {exc.msg}"
        ) from None
    if parallel is not None and (
        isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= 64
    ):
        raise CheckpointError("invalid_request", "parallel must be a whole number from 1 to 64")
    fields: dict[str, Any] = {"expression": expression.strip(), "trace": bool(trace)}
    if from_id is not None:
        fields["from_id"] = _require_id(from_id)
    if to_id is not None:
        fields["to_id"] = _require_id(to_id)
    if parallel is not None:
        fields["parallel"] = parallel
    pending = _require_agent().request("bisect", on_progress=on_progress, **fields)
    return pending.reply or {}


def bisect(
    expression: str,
    from_id: str | None = None,
    to_id: str | None = None,
    parallel: int | None = None,
    trace: bool = False,
) -> dict[str, Any] | None:
    """The first checkpoint where ``expression`` is truthy (its manifest), or None.

    It searches the chain of checkpoints from the root (or ``from_id``) to the one this kernel
    descends from (or ``to_id``), evaluating ``expression`` only in forks of them -- never
    here: this kernel's variables, execution count and history stay as they are. A binary
    search, with up to ``parallel`` forks at once (default: the machine's cores). A checkpoint
    where the expression raises counts as not true. Forks need the CRIU engine (else
    :class:`CheckpointError` ``engine_unavailable``)::

        first = kernel_checkpoint.bisect("loss != loss")   # the first NaN
        if first:
            print(first["id"], first["label"])

    ``%checkpoint bisect EXPR`` prints every evaluation; ``trace=True`` (there:
    ``--trace``) also finds the cell and line.
    """
    reply = bisect_search(expression, from_id, to_id, parallel, trace)
    return reply.get("checkpoint") if (reply.get("bisect") or {}).get("answer_id") else None


def parallel(ids: list[str], code: str, n: int | None = None) -> list[Any]:
    """Runs ``code`` in a fork of each checkpoint of ``ids``, ``n`` forks at once (default:
    the machine's cores), and returns the value of its last expression in each, in the order
    of ``ids`` (the object itself where it pickles, else its repr, as ``fork(id).execute``).
    Raises the first :class:`~kernel_checkpoint._fork.ForkError` (the code raised in a fork)
    or :class:`CheckpointError` (a fork could not start) once every fork has ended::

        # fast/slow checking: re-run each interval from its checkpoint, checked, in parallel
        ok = kernel_checkpoint.parallel(ids[:-1], "slow_checked_run(k)")
    """
    from ._parallel import run_in_forks

    return run_in_forks(ids, code, n)


def list_checkpoints(scope: str = "session") -> list[dict[str, Any]]:
    """The checkpoints (manifest dicts, see the protocol's Checkpoint), oldest first.

    ``scope='session'``: those of this notebook / this kernel's lineage; ``'all'``: every
    image in the store. Each dict gets an extra key ``current`` (True for the checkpoint the
    running kernel descends from)."""
    if scope not in ("session", "all"):
        raise CheckpointError("invalid_request", f"scope must be 'session' or 'all', not {scope!r}")
    reply = _require_agent().request("list", scope=scope).reply or {}
    current = reply.get("current_id")
    out = []
    for c in reply.get("checkpoints") or []:
        c = dict(c)
        c["current"] = c.get("id") == current
        out.append(c)
    return out


def delete(checkpoint_id: str) -> None:
    """Delete the image of checkpoint ``checkpoint_id`` from the store."""
    _require_agent().request("delete", checkpoint_id=_require_id(checkpoint_id))


def label(checkpoint_id: str, text: str | None) -> dict[str, Any] | None:
    """Give checkpoint ``checkpoint_id`` the label ``text`` (None or '' removes it); returns
    the updated manifest when the supervisor sends it."""
    if text is not None and not isinstance(text, str):
        raise TypeError(f"text must be a str or None, not {type(text).__name__}")
    pending = _require_agent().request(
        "label", checkpoint_id=_require_id(checkpoint_id), label=text if text else None
    )
    return (pending.reply or {}).get("checkpoint")


def status() -> dict[str, Any]:
    """The supervisor's status (protocol SupervisorStatus: engine, engine_ok, current_id,
    busy, store, ...)."""
    reply = _require_agent().request("status").reply or {}
    return dict(reply.get("status") or {}, current_id=reply.get("current_id"))
