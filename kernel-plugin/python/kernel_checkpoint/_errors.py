"""Exceptions of the kernel_checkpoint API (stdlib only: importing this must stay cheap)."""

from __future__ import annotations

NOT_CHECKPOINTABLE = (
    "This kernel is not checkpointable: start the notebook with a '... (checkpointable)' kernel "
    "(`kernel-checkpoint install` adds them)."
)


class CheckpointError(Exception):
    """A checkpoint request failed.

    ``code`` is one of the protocol's error codes (``unknown_checkpoint``, ``busy``,
    ``vetoed``, ``engine_failed``, ...), ``message`` one sentence for a person and
    ``detail`` the engine's own output, when there is any. Nothing was changed: the running
    kernel and every image are as before.
    """

    def __init__(self, code: str, message: str, detail: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"CheckpointError({self.code!r}, {self.message!r})"


class Veto(Exception):
    """Raise from a ``before_checkpoint`` hook to refuse the checkpoint.

    The message is shown to the person who asked for the checkpoint, e.g.
    ``raise Veto("the training loop holds a GPU lock; checkpoint after the epoch")``.
    """
