"""The %checkpoint line magic."""

from __future__ import annotations

import re
import shlex
import sys
from typing import Any, Callable

from IPython.core.magic import Magics, line_magic, magics_class

from . import _api
from ._errors import NOT_CHECKPOINTABLE, CheckpointError
from ._format import checkpoint_table, format_bytes, format_duration, status_text

USAGE = """\
Checkpoint this kernel, or list, restore, delete and label its checkpoints.

Usage::

  %checkpoint [-m LABEL]           checkpoint the kernel now; prints the new checkpoint's
                                   id, label, image size and the time it took
  %checkpoint list [--all]         table of this notebook's checkpoints (--all: every image in
                                   the store): id, parent, label, when, execution count, size,
                                   engine, the variables it held; '*' marks the one this
                                   kernel descends from
  %checkpoint restore ID           replace this kernel by one restored from checkpoint ID
                                   (variables, imports, threads: the whole process)
  %checkpoint fork ID              start a new kernel from checkpoint ID beside this one;
                                   prints its connection file (`jupyter console --existing
                                   FILE`); it runs until a shutdown_request
  %checkpoint bisect EXPR [--from ID] [--to ID] [--parallel N] [--trace]
                                   the first checkpoint where the Python expression EXPR is
                                   true, from the root (or --from) to this kernel's current
                                   checkpoint (or --to): a binary search that evaluates EXPR
                                   only in forks of the checkpoints (never in this kernel),
                                   N at once (default: the cores); a checkpoint where EXPR
                                   raises counts as not true. The last line names the answer
                                   and the checkpoint before it. --trace: replays the cells run
                                   between those two in a fork, under a line tracer, and names
                                   the cell and line that made EXPR true (saying when the
                                   replay cannot be trusted: files, clocks, randomness from the
                                   system, network). Forks need the CRIU engine.
  %checkpoint delete ID            delete checkpoint ID's image
  %checkpoint label ID TEXT        set checkpoint ID's label (TEXT may be several words;
                                   '' removes it)
  %checkpoint status               engine, store, current checkpoint

Options:
  -m LABEL, --label LABEL          label of the new checkpoint (quote it if it has spaces)

A checkpoint saves the entire kernel process as an image. After a restore -- minutes or days
later, after a crash, on another machine -- the kernel continues from the moment of the
checkpoint. The cell that asked for the restore says "Restored checkpoint ..."; the cell that
made the checkpoint, long done in the notebook, stays as it was.
From code, ``kernel_checkpoint.bisect(expr)`` returns the answer of a bisect (or None) and
``kernel_checkpoint.parallel(ids, code, n)`` runs code in forks of several checkpoints at once.
Use ``kernel_checkpoint.checkpoint(label)``, which returns an object whose
``resumed`` / ``restarted`` say whether it returns in the original process or in a restored
one; hooks that run before a checkpoint, on resume and on restart are registered with the
``@kernel_checkpoint.before_checkpoint``, ``@on_resume`` and ``@on_restart`` decorators.

Errors print one line and change nothing. The kernel must have been started with a
'... (checkpointable)' kernel (`kernel-checkpoint install` adds them).
"""

SUBCOMMANDS = ("list", "restore", "fork", "bisect", "delete", "label", "status", "help")

#: The options of %checkpoint bisect; what is left of the line is the expression.
BISECT_OPTION = re.compile(r"(?:^|\s)--(from|to|parallel)(?:=|\s+)(\S+)|(?:^|\s)--(trace)(?=\s|$)")
BISECT_USAGE = "%checkpoint bisect EXPR [--from ID] [--to ID] [--parallel N] [--trace]"


class _Usage(Exception):
    pass


def _engine(c: dict[str, Any]) -> str:
    e = c.get("engine") or {}
    return " ".join(str(x) for x in (e.get("name"), e.get("version")) if x) or "?"


def _quote(label: Any) -> str:
    return f' "{label}"' if label else ""


def describe_checkpoint(c: dict[str, Any]) -> str:
    """One line: id, label, size, time taken, engine."""
    return (
        f"Checkpoint {c.get('id', '?')}{_quote(c.get('label'))}: "
        f"{format_bytes(c.get('image_bytes'))}, took {format_duration(c.get('duration_ms'))} "
        f"({_engine(c)})"
    )


def _error_line(action: str, exc: CheckpointError) -> str:
    if exc.message == NOT_CHECKPOINTABLE:
        return exc.message
    return f"{action} failed: {exc.message} ({exc.code})"


@magics_class
class CheckpointMagics(Magics):
    def __init__(
        self,
        shell: Any = None,
        out: Callable[[str], None] | None = None,
        err: Callable[[str], None] | None = None,
    ):
        super().__init__(shell)
        self._out = out or (lambda s: print(s, flush=True))
        self._err = err or (lambda s: print(s, file=sys.stderr, flush=True))

    @line_magic
    def checkpoint(self, line: str = "") -> None:
        head, _, rest = line.strip().partition(" ")
        if head == "bisect":
            # The expression is Python: quotes and spaces in it are its own, not shell words.
            try:
                self._bisect(rest)
            except _Usage as exc:
                self._err(f"Usage: {exc}  (see %checkpoint?)")
            except CheckpointError as exc:
                self._err(_error_line("Bisect", exc))
            return
        try:
            args = shlex.split(line)
        except ValueError as exc:
            self._err(f"%checkpoint: cannot parse the arguments: {exc}")
            return
        sub = args[0] if args and args[0] in SUBCOMMANDS else None
        action = {
            "list": "List",
            "restore": "Restore",
            "fork": "Fork",
            "bisect": "Bisect",
            "delete": "Delete",
            "label": "Label",
            "status": "Status",
        }.get(sub or "", "Checkpoint")
        try:
            if sub == "help":
                self._out(USAGE)
            elif sub is None:
                self._checkpoint(args)
            else:
                getattr(self, f"_{sub}")(args[1:])
        except _Usage as exc:
            self._err(f"Usage: {exc}  (see %checkpoint?)")
        except CheckpointError as exc:
            self._err(_error_line(action, exc))

    checkpoint.__doc__ = USAGE

    # -- subcommands -------------------------------------------------------------------------

    def _checkpoint(self, args: list[str]) -> None:
        label = None
        i = 0
        while i < len(args):
            a = args[i]
            if a in ("-m", "--label"):
                if i + 1 >= len(args):
                    raise _Usage("%checkpoint -m LABEL")
                label = args[i + 1]
                i += 2
            elif a.startswith("--label="):
                label = a.split("=", 1)[1]
                i += 1
            elif a.startswith("-m") and len(a) > 2:
                label = a[2:]
                i += 1
            else:
                raise _Usage(
                    f"%checkpoint [-m LABEL] | {' | '.join(SUBCOMMANDS[:-1])} (unexpected {a!r})"
                )
        result = _api.checkpoint(label)
        if result.restarted:
            # Continuing in a process restored from this checkpoint: its output would land in
            # the cell that made the checkpoint, far up the notebook. The cell that asked for
            # the restore (if any) says so itself.
            return
        if result.checkpoint:
            self._out(describe_checkpoint(result.checkpoint))
        else:
            self._out(f"Checkpoint {result.id}{_quote(result.label)}")

    def _list(self, args: list[str]) -> None:
        scope = "session"
        for a in args:
            if a in ("--all", "-a"):
                scope = "all"
            else:
                raise _Usage("%checkpoint list [--all]")
        checkpoints = _api.list_checkpoints(scope)
        if not checkpoints:
            where = "in the store" if scope == "all" else "for this notebook"
            self._out(f"No checkpoints {where} yet.")
            return
        current = next((c.get("id") for c in checkpoints if c.get("current")), None)
        self._out(checkpoint_table(checkpoints, current))

    def _one_id(self, args: list[str], usage: str) -> str:
        if len(args) != 1:
            raise _Usage(usage)
        return args[0]

    def _restore(self, args: list[str]) -> None:
        cid = self._one_id(args, "%checkpoint restore ID")
        # Nothing is promised before the supervisor has checked the image: a bad id only fails.
        self._out(f"Restoring checkpoint {cid}...")
        manifest = _api.restore(cid)
        self._out(f"Restored checkpoint {(manifest or {}).get('id', cid)}.")

    def _fork(self, args: list[str]) -> None:
        cid = self._one_id(args, "%checkpoint fork ID")
        connection_file, _ = _api.fork_connection_file(cid)
        self._out(f"Forked checkpoint {cid}: a new kernel runs beside this one.")
        self._out(f"Connect with: jupyter console --existing {connection_file}")

    def _bisect(self, text: str) -> None:
        options: dict[str, str] = {}

        def take(match: re.Match[str]) -> str:
            if match.group(3):
                options["trace"] = "1"
            else:
                options[match.group(1)] = match.group(2)
            return " "

        expression = BISECT_OPTION.sub(take, text).strip()
        if len(expression) >= 2 and expression[0] == expression[-1] and expression[0] in "'\"":
            try:
                words = shlex.split(expression)
            except ValueError:
                words = []
            if len(words) == 1:  # the whole expression quoted, as a shell word
                expression = words[0]
        if not expression:
            raise _Usage(BISECT_USAGE)
        parallel = None
        if "parallel" in options:
            try:
                parallel = int(options["parallel"])
            except ValueError:
                raise _Usage(f"{BISECT_USAGE} (N is a number)") from None

        def progress(message: dict[str, Any]) -> None:
            if message.get("stage") == "evaluating" and message.get("message"):
                self._out(f"  {message['message']}")

        self._out(f"Looking for the first checkpoint where {expression} is true...")
        reply = _api.bisect_search(
            expression,
            from_id=options.get("from"),
            to_id=options.get("to"),
            parallel=parallel,
            trace="trace" in options,
            on_progress=progress,
        )
        result = reply.get("bisect") or {}
        labels = {c.get("id"): c.get("label") for c in _api.list_checkpoints("all")}

        def name(cid: str | None) -> str:
            return f"{cid}{_quote(labels.get(cid))}"

        for line in bisect_report(result, name):
            self._out(line)

    def _delete(self, args: list[str]) -> None:
        cid = self._one_id(args, "%checkpoint delete ID")
        _api.delete(cid)
        self._out(f"Deleted checkpoint {cid}.")

    def _label(self, args: list[str]) -> None:
        if len(args) < 2:
            raise _Usage("%checkpoint label ID TEXT")
        cid, text = args[0], " ".join(args[1:])
        manifest = _api.label(cid, text)
        got = (manifest or {}).get("label", text or None)
        if got:
            self._out(f'Checkpoint {cid} is now labelled "{got}".')
        else:
            self._out(f"Checkpoint {cid} has no label now.")

    def _status(self, args: list[str]) -> None:
        if args:
            raise _Usage("%checkpoint status")
        self._out(status_text(_api.status()))


def bisect_report(result: dict[str, Any], name: Callable[[str | None], str]) -> list[str]:
    """The lines %checkpoint bisect prints after the evaluations; the last names the answer."""
    lines = []
    for probe in result.get("probes") or []:
        if probe.get("outcome") in ("error", "fork_failed"):
            how = "raised" if probe["outcome"] == "error" else "could not be evaluated:"
            lines.append(
                f"At {name(probe.get('checkpoint_id'))} the expression {how} "
                f"{probe.get('error', '?')} (counted as not true)."
            )
    trace = result.get("trace")
    if trace:
        lines.extend(trace_report(trace))
    span = result.get("range") or []
    lines.append(
        f"{result.get('forks', 0)} forks in {result.get('rounds', 0)} rounds "
        f"(up to {result.get('parallel', '?')} at once) over {len(span)} checkpoints, "
        f"{format_duration(result.get('duration_ms'))}."
    )
    answer, before = result.get("answer_id"), result.get("before_id")
    expression = result.get("expression", "")
    if answer is None:
        lines.append(f"{expression} is true at none of the {len(span)} checkpoints searched.")
    elif before is None:
        lines.append(
            f"First true at {name(answer)}, the first checkpoint searched (none before it)."
        )
    else:
        lines.append(f"First true at {name(answer)}; the one before it: {name(before)}.")
    return lines


def trace_report(trace: dict[str, Any]) -> list[str]:
    """What --trace found, in a line or two, and why not to trust it when that is so."""
    if trace.get("error"):
        return [f"Trace: {trace['error']}."]
    lines = []
    if trace.get("found"):
        count = trace.get("execution_count")
        where = f"In [{count}]" if isinstance(count, int) else f"recorded cell {trace['cell'] + 1}"
        lines.append(
            f"Trace: {where}, line {trace.get('line')} made it true: "
            f"{(trace.get('source_line') or '').strip()}"
        )
    else:
        lines.append(
            f"Trace: replaying {trace.get('cells_replayed', 0)} cells did not make it true."
        )
    concerns = trace.get("concerns") or []
    if concerns:
        lines.append("Trace: the replay cannot be trusted: " + " ".join(concerns))
    return lines
