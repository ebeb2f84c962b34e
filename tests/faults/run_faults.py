"""The fault suite: run after run, a kernel under the real supervisor and real CRIU holds a known
state (a numpy array and a counter), makes two checkpoints, and then suffers ONE fault at a
random point of a checkpoint or a restore: kill -9 of the supervisor, of the engine (criu dump,
criu restore) or of the kernel, a full disk (the store on a small tmpfs of the run's own), or a
damaged image (a flipped byte, a truncated file, a removed file).

After each run it checks what a user relies on:
- no orphan: every process of the kernel (found by the run's runtime folder in its environment)
  is gone within 2 s of a dead supervisor, and after the run's kernels are shut down;
- no half image: `list` shows only whole images, and no `.partial-*` folder stays in the store;
- nothing lost: every image sealed before the fault restores bit for bit (the array's checksum
  and the counter), or, when the fault damaged it, is refused with corrupt_image while the others
  restore; an image the fault let finish restores to its own state;
- the kernel that should live answers with its state.

    python tests/faults/run_faults.py --seed 1 --runs 200

prints one line per run, then `runs / faults / lost / orphans / ... / rewound` and a table per
fault type (rewound: the kernel died with its killed `criu dump`, which CRIU cannot avoid in one
window, and came back from its last checkpoint, checked to hold that checkpoint's state). The
same seed gives the same faults, delays and sizes (the machine's timing still varies). A run that
fails keeps what its supervisors logged in `kc-faults-SEED-runN.log` (in the temp folder), and a
request left unanswered prints what each process of its kernel waits on (state, wchan, stack)."""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS, TESTS / "integration"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from enginewatch import DUMPING, RESTORING, processes_referring_to, wait_for_helper  # noqa: E402
from kctesting import (  # noqa: E402
    CommError,
    Kernel,
    alive,
    descendants,
    doctor,
    kernel_checkpoint_command,
    private_jupyter_folders,
    wait_sealed,
)

#: How long the processes of a kernel may outlive its supervisor.
GRACE_S = 2.0
#: How long a shut-down kernel's processes may take to go.
SHUTDOWN_S = 15.0
#: How long a request whose engine was killed may take to answer (a restore of the largest
#: kernel here takes a few seconds; no answer by then is a hang).
REPLY_S = 60
#: What a checkpoint's error says when its kernel died with the killed dump and was restarted
#: from its checkpoint (restore-flow.ts, `rewind`).
REWOUND = re.compile(r"restarted from its checkpoint (\S+):")
#: The tmpfs of a disk-full run: two images of a small kernel and the start of a third.
TMPFS_MIB = 320

FAULTS = (
    "kill_supervisor_checkpoint",
    "kill_supervisor_restore",
    "kill_dump",
    "kill_restore",
    "kill_kernel_checkpoint",
    "kill_kernel_restore",
    "disk_full_checkpoint",
    "disk_full_restore",
    "flip_byte",
    "truncate_file",
    "remove_file",
)

STATE_CODE = """
import hashlib, numpy as np
state = np.random.default_rng({seed}).random({floats})
counter = 0
def fingerprint():
    return [counter, hashlib.sha256(state.tobytes()).hexdigest()]
"""
STEP_CODE = "counter += 1; state[counter] = counter"


def describe(pid: int) -> str:
    """State, parent and age of a process, to tell which of a lineage's kernels it is."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - int(fields[19]) / ticks
    except OSError:
        return "gone"
    return f"state {fields[0]}, parent {fields[1]}, {age:.1f} s old"


def process_report(pids: list[int]) -> str:
    """What each process is doing: state, parent, where it waits in the kernel (wchan and stack,
    readable as root) and its command line, to see what a hung run waits on."""
    lines = []
    for pid in pids:
        proc = Path(f"/proc/{pid}")
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            wchan = (proc / "wchan").read_text()
        except OSError:
            continue
        try:
            stack = " < ".join(
                line.split("] ", 1)[-1].split("+")[0]
                for line in (proc / "stack").read_text().splitlines()[:6]
            )
        except OSError:
            stack = "?"
        lines.append(f"  {pid} ({describe(pid)}) wchan {wchan or '-'} [{stack}] {cmdline[:300]}")
    return "\n".join(lines)


def pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def restored_task(restorer: int, timeout: float = 10) -> int:
    """The kernel `criu restore` (`restorer`) is restoring, or -1 when the restore is over (its
    kernel on its own) or failed: found by what it is, the task in a PID namespace other than
    CRIU's (the kernel is init of one; CRIU's short-lived helpers, also its children, share
    CRIU's). Its command line is CRIU's until the restore's last steps, so it cannot tell."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        own = pid_namespace(restorer)
        if own is None:
            return -1
        for pid in descendants(restorer):
            namespace = pid_namespace(pid)
            if namespace is not None and namespace != own:
                return pid
        time.sleep(0.001)
    return -1


class RunFailed(AssertionError):
    """What a run found broken (a lost image or kernel, an orphan, a half image)."""


@dataclass
class Outcome:
    fault: str
    note: str = ""
    lost: list[str] = field(default_factory=list)
    #: The kernel died with its killed dump (CRIU's window, docs/engines.md "A killed dump") and
    #: was restarted from its last checkpoint, whose state it was checked to have.
    rewound: int = 0
    orphans: int = 0
    half_images: list[str] = field(default_factory=list)
    error: str = ""
    #: The processes of a run that hung, as found when it did (see `Run.snapshot`).
    left: str = ""
    #: Where this run's supervisors' log was kept, when it failed.
    log_copy: str = ""

    @property
    def ok(self) -> bool:
        return not (self.lost or self.orphans or self.half_images or self.error)


class Run:
    """One run: its own runtime folder (every process of its kernels has that path in its
    environment), its own store (on a tmpfs for disk faults), its own random choices."""

    def __init__(
        self,
        env: dict[str, str],
        rng: random.Random,
        fault: str,
        engine: str,
        log: Any = None,
        pause_s: float | None = None,
    ):
        #: Every fault's pause before its kill, fixed (to reproduce a kill at one point).
        self.pause_s = pause_s
        self.log = log
        self.rng = rng
        self.fault = fault
        self.engine = engine
        self.outcome = Outcome(fault)
        self.runtime = Path(tempfile.mkdtemp(prefix="kcf-"))  # short: socket paths below it
        self.base = Path(tempfile.mkdtemp(prefix="kcf-store-"))
        self.mounted = False
        if fault.startswith("disk_full"):
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0700", "tmpfs", self.base],
                check=True,
            )
            self.mounted = True
        self.store = self.base / "store"
        self.env = {
            **env,
            "KERNEL_CHECKPOINT_STORE": str(self.store),
            "KERNEL_CHECKPOINT_ENGINE": engine,
            "KERNEL_CHECKPOINT_RUNTIME_DIR": str(self.runtime),
        }
        self.kernels: list[Kernel] = []
        self.supervisors: set[int] = set()
        #: label -> the fingerprint its image must restore to
        self.expected: dict[str, list[Any]] = {}
        #: image id -> label, for the images sealed before the fault
        self.sealed: dict[str, str] = {}
        self.damaged: str | None = None
        self.filler = self.base / "filler"

    # -- kernels ------------------------------------------------------------------------------
    def start(self) -> Kernel:
        kernel = Kernel(dict(self.env), stderr=self.log)
        self.kernels.append(kernel)
        self.supervisors.add(kernel.supervisor_pid)
        return kernel

    def fingerprint(self, kernel: Kernel) -> list[Any]:
        return kernel.client.value("fingerprint()")

    def checkpoint(self, kernel: Kernel) -> tuple[str, float]:
        kernel.client.run(STEP_CODE)
        label = f"counter-{self.fingerprint(kernel)[0]}"
        self.expected[label] = self.fingerprint(kernel)
        began = time.monotonic()
        taken = kernel.client.checkpoint(label)
        return taken["id"], time.monotonic() - began

    def snapshot(self, why: str) -> None:
        """Keeps what is left of a run that hangs: its supervisors' processes and what each waits
        on (the run goes on, and its shutdown kills them)."""
        pids: set[int] = set()
        for supervisor in self.supervisors:
            if alive(supervisor):
                pids |= {supervisor, *descendants(supervisor)}
        pids |= set(self.processes())
        self.outcome.left += f"{why}:\n{process_report(sorted(pids))}\n"

    # -- checks -------------------------------------------------------------------------------
    def processes(self) -> dict[int, str]:
        """The live processes of this run's kernels: those naming its runtime folder, and those
        in a session of one of its supervisors (a task CRIU was restoring has no readable
        environment yet)."""
        found = processes_referring_to(self.runtime)
        sessions = self.supervisors
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if fields[0] not in ("Z", "X") and {int(fields[2]), int(fields[3])} & sessions:
                found[int(entry.name)] = cmdline
        return found

    def expect_gone_with_supervisor(self, kernel: Kernel) -> None:
        """The supervisor is dead (killed, or exited after its kernel): its processes go too."""
        process = kernel.km.provisioner.process  # type: ignore[union-attr]
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired as error:
            raise RunFailed("the supervisor did not exit after its kernel was killed") from error
        dead = time.monotonic()
        while self.processes() and time.monotonic() - dead < GRACE_S:
            time.sleep(0.01)
        self.count_orphans(f"{GRACE_S} s after the supervisor died")
        kernel.client.close()
        self.kernels.remove(kernel)
        kernel.km.cleanup_resources()

    def count_orphans(self, when: str) -> None:
        left = self.processes()
        if left:
            self.outcome.orphans += len(left)
            self.outcome.note += f" orphans {when}: " + "; ".join(
                f"{pid} ({describe(pid)}) {cmdline}" for pid, cmdline in left.items()
            )
            for pid in left:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)

    def expect_no_half_image(self, kernel: Kernel) -> list[dict[str, Any]]:
        """`list` shows whole images only, and the store keeps no half image for long (the
        writer removes its own; the next supervisor removes a dead writer's)."""
        deadline = time.monotonic() + 10
        partial = sorted(p.name for p in self.store.glob(".partial-*"))
        while partial and time.monotonic() < deadline:
            time.sleep(0.05)
            partial = sorted(p.name for p in self.store.glob(".partial-*"))
        self.outcome.half_images += partial
        listed = kernel.client.list(scope="all")
        for image in listed:
            if image["id"].startswith(".") or image.get("label") not in self.expected:
                self.outcome.half_images.append(f"listed: {image['id']} {image.get('label')}")
        return listed

    def expect_state(self, kernel: Kernel, wanted: list[Any], what: str) -> None:
        try:
            got = self.fingerprint(kernel)
        except Exception as error:  # any failure is the finding
            self.outcome.lost.append(f"{what}: no answer ({error})")
            return
        if got != wanted:
            self.outcome.lost.append(f"{what}: state {got} instead of {wanted}")

    def verify_images(self, kernel: Kernel) -> None:
        """Every listed image restores to its own state; the damaged one is refused."""
        listed = self.expect_no_half_image(kernel)
        ids = {image["id"] for image in listed}
        for image_id, label in self.sealed.items():
            if image_id not in ids:
                self.outcome.lost.append(f"sealed image {image_id} ({label}) not listed")
        for image in listed:
            image_id, label = image["id"], image.get("label")
            if label not in self.expected:
                continue
            if image_id == self.damaged:
                try:
                    kernel.client.restore(image_id)
                except CommError as error:
                    if error.code != "corrupt_image":
                        self.outcome.lost.append(f"damaged {image_id}: {error.code} {error}")
                    continue
                self.outcome.lost.append(f"damaged image {image_id} was restored")
                continue
            try:
                kernel.client.restore(image_id)
            except CommError as error:
                self.outcome.lost.append(f"image {image_id} ({label}): {error.code} {error}")
                continue
            self.expect_state(kernel, self.expected[label], f"image {image_id} ({label})")

    # -- the run ------------------------------------------------------------------------------
    def setup(self) -> tuple[Kernel, float]:
        kernel = self.start()
        floats = self.rng.choice((1, 2, 4, 8)) << 20  # 8-64 MiB of float64
        kernel.client.run(STATE_CODE.format(seed=self.rng.randrange(1 << 30), floats=floats))
        durations = []
        for _ in range(2):
            image_id, took = self.checkpoint(kernel)
            durations.append(took)
            wait_sealed(self.store, image_id)
            self.sealed[image_id] = f"counter-{self.fingerprint(kernel)[0]}"
        kernel.client.run(STEP_CODE)  # the running kernel's state differs from every image
        self.outcome.note = f"{floats >> 17} MiB"
        return kernel, max(durations)

    def execute(self) -> Outcome:
        try:
            kernel, took = self.setup()
            getattr(self, self.fault)(kernel, took)
        except Exception as error:  # reported per run, the suite goes on
            self.outcome.error = f"{type(error).__name__}: {error}"
        finally:
            self.finish()
        return self.outcome

    def finish(self) -> None:
        for kernel in self.kernels:
            try:
                kernel.shutdown()
            except Exception as error:
                self.outcome.note += f" shutdown: {error}"
        deadline = time.monotonic() + SHUTDOWN_S
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.count_orphans("after shutdown")
        if self.mounted:
            subprocess.run(["umount", "-l", self.base], check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.runtime, ignore_errors=True)

    def delay(self, longest: float) -> float:
        pause = self.rng.uniform(0, longest)  # drawn even when fixed: the seed's runs stay alike
        if self.pause_s is not None:
            pause = self.pause_s
        time.sleep(pause)
        return pause

    def new_checkpoint_label(self, kernel: Kernel) -> str:
        kernel.client.run(STEP_CODE)
        label = f"counter-{self.fingerprint(kernel)[0]}"
        self.expected[label] = self.fingerprint(kernel)
        return label

    def any_sealed(self) -> str:
        return self.rng.choice(sorted(self.sealed))

    def after_fatal(self, kernel: Kernel) -> None:
        """The supervisor died: nothing of it may stay, and a new one finds every image."""
        self.expect_gone_with_supervisor(kernel)
        self.verify_images(self.start())

    # -- the faults ---------------------------------------------------------------------------
    def kill_supervisor_checkpoint(self, kernel: Kernel, took: float) -> None:
        kernel.client.send_request("checkpoint", label=self.new_checkpoint_label(kernel))
        pause = self.delay(took * 1.2)
        self.outcome.note += f" kill after {pause * 1000:.0f} ms"
        os.kill(kernel.supervisor_pid, signal.SIGKILL)
        self.after_fatal(kernel)

    def kill_supervisor_restore(self, kernel: Kernel, took: float) -> None:
        kernel.client.send_request("restore", checkpoint_id=self.any_sealed())
        pause = self.delay(took * 1.5)
        self.outcome.note += f" kill after {pause * 1000:.0f} ms"
        os.kill(kernel.supervisor_pid, signal.SIGKILL)
        self.after_fatal(kernel)

    def kill_helper(self, kernel: Kernel, words: tuple[str, ...], longest: float) -> bool:
        helper = wait_for_helper(kernel.supervisor_pid, words, timeout=60)
        pause = self.delay(longest)
        hit = alive(helper)
        if hit:
            os.kill(helper, signal.SIGKILL)
        self.outcome.note += f" kill {words[-1]} after {pause * 1000:.0f} ms" + (
            "" if hit else " (it had ended)"
        )
        return hit

    def kill_dump(self, kernel: Kernel, took: float) -> None:
        label = self.new_checkpoint_label(kernel)
        before = self.expected[label]  # the shell is held while the checkpoint runs
        request = kernel.client.send_request("checkpoint", label=label)
        self.kill_helper(kernel, DUMPING[self.engine], took * 0.8)
        try:
            kernel.client.wait_reply(request, timeout=60)
        except CommError as error:
            self.outcome.note += f" -> {error.code}"
            rewound = REWOUND.search(str(error))
            if rewound:
                # Killed while its injected code ran in the kernel: the kernel died with CRIU, and
                # came back from its checkpoint, which must be the one it had, state and all.
                self.outcome.rewound += 1
                self.outcome.note += " (the kernel died with its dump: rewound)"
                image = rewound.group(1)
                if image not in self.sealed:
                    self.outcome.lost.append(f"rewound to {image}, not its last checkpoint")
                    return
                before = self.expected[self.sealed[image]]
        except TimeoutError:
            self.outcome.lost.append("no reply to the checkpoint 60 s after its criu dump died")
            self.snapshot("no reply to the checkpoint")
            return
        self.aftermath(kernel, must_live=True, state=before)

    def kill_restore(self, kernel: Kernel, took: float) -> None:
        request = kernel.client.send_request("restore", checkpoint_id=self.any_sealed())
        self.kill_helper(kernel, RESTORING[self.engine], took * 0.8)
        try:
            kernel.client.wait_reply(request, timeout=REPLY_S)
        except CommError as error:
            self.outcome.note += f" -> {error.code}"
        except TimeoutError:
            self.outcome.lost.append(f"no reply to the restore {REPLY_S} s after its criu died")
            self.snapshot("no reply to the restore")
        # A kill after the restore ended kills the restored kernel too (its parent).
        self.aftermath(kernel, must_live=False)

    def aftermath(self, kernel: Kernel, must_live: bool, state: list[Any] | None = None) -> None:
        """After the fault's request ended: a supervisor that died (its kernel died with the
        engine that was its parent, or it was killed) leaves nothing and a new one finds every
        image; one that lives answers, with `state` when given, and finds every image."""
        time.sleep(0.3)  # a supervisor whose kernel died exits within milliseconds
        if kernel.km.provisioner.process.poll() is not None:  # type: ignore[union-attr]
            self.outcome.note += " (supervisor exited)"
            if must_live:
                self.outcome.lost.append("the supervisor exited, its kernel with it")
            self.after_fatal(kernel)
            return
        if state is not None:
            self.expect_state(kernel, state, "the running kernel")
        else:
            try:
                kernel.client.value("1")
            except Exception as error:
                self.outcome.lost.append(f"the kernel does not answer after the fault ({error})")
        self.verify_images(kernel)

    def kernel_dies(self, kernel: Kernel, request: str, pid_of: Callable[[], int]) -> None:
        pid = pid_of()
        if pid < 0:
            self.outcome.note += " (no kernel to kill)"
        elif alive(pid):
            os.kill(pid, signal.SIGKILL)
        # A supervisor whose kernel died exits without a reply: wait for whichever comes first.
        process = kernel.km.provisioner.process  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                kernel.client.wait_reply(request, timeout=0.5)
                break
            except CommError as error:
                self.outcome.note += f" -> {error.code}"
                break
            except TimeoutError:
                if process.poll() is not None:
                    break
        else:
            self.outcome.note += " -> no reply in 30 s"
            self.snapshot("no reply to the request 30 s after the kernel died")
        self.aftermath(kernel, must_live=False)

    def kill_kernel_checkpoint(self, kernel: Kernel, took: float) -> None:
        pid = kernel.kernel_pid()
        request = kernel.client.send_request("checkpoint", label=self.new_checkpoint_label(kernel))
        pause = self.delay(took * 1.2)
        self.outcome.note += f" kill kernel after {pause * 1000:.0f} ms"
        self.kernel_dies(kernel, request, lambda: pid)

    def kill_kernel_restore(self, kernel: Kernel, took: float) -> None:
        request = kernel.client.send_request("restore", checkpoint_id=self.any_sealed())
        restorer = wait_for_helper(
            kernel.supervisor_pid, RESTORING[self.engine], with_child=True, timeout=60
        )
        pause = self.delay(took * 0.8)
        self.outcome.note += f" kill restored kernel after {pause * 1000:.0f} ms"
        self.kernel_dies(kernel, request, lambda: restored_task(restorer))

    def fill(self, leave: int) -> None:
        """Fills the store's tmpfs up to `leave` bytes free."""
        free = shutil.disk_usage(self.base).free
        with open(self.filler, "wb") as filler:
            size = max(0, free - leave)
            chunk = b"\0" * (1 << 20)
            while size > 0:
                try:
                    filler.write(chunk[: min(size, len(chunk))])
                except OSError:
                    break
                size -= len(chunk)

    def image_bytes(self) -> int:
        image = self.store / next(iter(self.sealed))
        return sum(p.stat().st_size for p in image.rglob("*") if p.is_file())

    def disk_full_checkpoint(self, kernel: Kernel, took: float) -> None:
        leave = int(self.rng.uniform(0, 0.9) * self.image_bytes())
        self.fill(leave)
        self.outcome.note += f" {leave >> 20} MiB free"
        before = None
        try:
            label = self.new_checkpoint_label(kernel)
            before = self.fingerprint(kernel)
            kernel.client.checkpoint(label)
            self.outcome.note += " -> saved"
        except CommError as error:
            self.outcome.note += f" -> {error.code}"
            if error.code != "no_space":
                self.outcome.lost.append(f"a full disk gave {error.code}: {error}")
        self.filler.unlink()
        self.aftermath(kernel, must_live=True, state=before)

    def disk_full_restore(self, kernel: Kernel, took: float) -> None:
        before = self.fingerprint(kernel)
        self.fill(int(self.rng.uniform(0, 64 << 10)))
        target = self.any_sealed()
        try:
            kernel.client.restore(target)
            self.outcome.note += " -> restored"
            state = self.expected[self.sealed[target]]
        except CommError as error:
            self.outcome.note += f" -> {error.code}"
            state = before
        self.filler.unlink()
        self.aftermath(kernel, must_live=True, state=state)

    def damage(self, kernel: Kernel, how: Callable[[Path], None]) -> None:
        self.damaged = self.any_sealed()
        files = sorted(p for p in (self.store / self.damaged / "image").rglob("*") if p.is_file())
        victim = self.rng.choice([p for p in files if p.stat().st_size > 0])
        how(victim)
        self.outcome.note += f" {victim.name}"
        before = self.fingerprint(kernel)
        try:
            kernel.client.restore(self.damaged)
            self.outcome.lost.append(f"damaged image {self.damaged} ({victim.name}) restored")
        except CommError as error:
            if error.code != "corrupt_image":
                self.outcome.lost.append(f"damaged image refused with {error.code}: {error}")
        self.aftermath(kernel, must_live=True, state=before)

    def flip_byte(self, kernel: Kernel, took: float) -> None:
        def flip(path: Path) -> None:
            with open(path, "r+b") as image:
                offset = self.rng.randrange(path.stat().st_size)
                image.seek(offset)
                byte = image.read(1)[0]
                image.seek(offset)
                image.write(bytes([byte ^ (1 << self.rng.randrange(8))]))

        self.damage(kernel, flip)

    def truncate_file(self, kernel: Kernel, took: float) -> None:
        self.damage(kernel, lambda path: os.truncate(path, self.rng.randrange(path.stat().st_size)))

    def remove_file(self, kernel: Kernel, took: float) -> None:
        self.damage(kernel, Path.unlink)


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(len(o.lost) for o in self.outcomes)

    @property
    def orphans(self) -> int:
        return sum(o.orphans for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def table(self) -> str:
        runs = len(self.outcomes)
        faults = sum(1 for o in self.outcomes if not o.error)
        lines = [
            f"runs {runs} / faults {faults} / lost {self.lost} / orphans {self.orphans}"
            f" / half images {sum(len(o.half_images) for o in self.outcomes)}"
            f" / errors {sum(1 for o in self.outcomes if o.error)}"
            f" / rewound {sum(o.rewound for o in self.outcomes)}",
            "",
            f"{'fault':<28}{'runs':>6}{'lost':>6}{'orphans':>9}{'half':>6}{'errors':>8}"
            f"{'rewound':>9}",
        ]
        for fault in FAULTS:
            mine = [o for o in self.outcomes if o.fault == fault]
            if mine:
                lines.append(
                    f"{fault:<28}{len(mine):>6}{sum(len(o.lost) for o in mine):>6}"
                    f"{sum(o.orphans for o in mine):>9}"
                    f"{sum(len(o.half_images) for o in mine):>6}"
                    f"{sum(1 for o in mine if o.error):>8}"
                    f"{sum(o.rewound for o in mine):>9}"
                )
        return "\n".join(lines)


def run_suite(
    seed: int,
    runs: int,
    env: dict[str, str],
    engine: str = "criu",
    faults: tuple[str, ...] = FAULTS,
    say: Callable[[str], None] = print,
    log: Any = None,
    only: int | None = None,
    minutes: float | None = None,
    pause_s: float | None = None,
) -> Summary:
    """Runs `runs` seeded runs (or only run number `only` of them, to reproduce it); each run's
    fault, delays and sizes come from (seed, run)."""
    summary = Summary()
    stop_at = time.monotonic() + minutes * 60 if minutes else None
    for number in range(runs) if only is None else [only]:
        if stop_at and time.monotonic() > stop_at:
            say(f"stopped after {number} runs: --minutes {minutes} are up")
            break
        rng = random.Random(f"{seed}-{number}")
        fault = faults[number % len(faults)] if runs >= len(faults) else rng.choice(faults)
        began = time.monotonic()
        log_start = os.lseek(log.fileno(), 0, os.SEEK_END) if log else 0
        outcome = Run(env, rng, fault, engine, log, pause_s).execute()
        summary.outcomes.append(outcome)
        verdict = "ok" if outcome.ok else "FAIL"
        if log and not outcome.ok:
            outcome.log_copy = keep_log_of_run(log, log_start, seed, number)
        say(
            f"run {number:>3} {fault:<28} {verdict:<4} {time.monotonic() - began:5.1f} s"
            f"  {outcome.note.strip()}"
            + "".join(f"\n    lost: {x}" for x in outcome.lost)
            + "".join(f"\n    half image: {x}" for x in outcome.half_images)
            + (f"\n    error: {outcome.error}" if outcome.error else "")
            + (f"\n    left:\n{outcome.left}" if outcome.left else "")
            + (f"\n    its supervisors' log: {outcome.log_copy}" if outcome.log_copy else "")
        )
    return summary


def keep_log_of_run(log: Any, start: int, seed: int, number: int) -> str:
    """Copies what the supervisors wrote during one run into a file of its own; returns its path."""
    log.flush()
    with open(log.name, "rb") as whole:
        whole.seek(start)
        text = whole.read()
    kept = Path(tempfile.gettempdir()) / f"kc-faults-{seed}-run{number}.log"
    kept.write_bytes(text)
    return str(kept)


def private_jupyter_env() -> tuple[dict[str, str], Path]:
    """Private Jupyter folders with the checkpointable kernelspec installed, as the tests use."""
    base = Path(tempfile.mkdtemp(prefix="kcf-jupyter-"))
    env = private_jupyter_folders(base)
    os.environ.update(env)
    subprocess.run(
        [kernel_checkpoint_command(), "install", "--user"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dict(os.environ), base


def criu_problem() -> str | None:
    """Why the suite cannot run here, or None."""
    probe = doctor().get("criu")
    if probe is None:
        return "the criu engine is not part of this build"
    if not probe["ok"]:
        return f"CRIU cannot run here: {probe['problem']}"
    if os.geteuid() != 0:
        return "the disk-full faults mount a tmpfs, which needs root"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--fault", action="append", choices=FAULTS, help="only these faults")
    parser.add_argument("--run", type=int, help="only this run of the seed (to reproduce it)")
    parser.add_argument("--minutes", type=float, help="start no run after this many minutes")
    parser.add_argument(
        "--pause-ms", type=float, help="kill after this pause every time, not a random one"
    )
    args = parser.parse_args()
    env, base = private_jupyter_env()
    try:
        problem = criu_problem()
        if problem:
            print(f"cannot run the fault suite: {problem}", file=sys.stderr)
            return 2
        began = time.monotonic()
        log_path = Path(tempfile.gettempdir()) / f"kc-faults-{args.seed}.log"
        print(f"the supervisors' logs: {log_path}")
        with open(log_path, "w") as log:
            summary = run_suite(
                args.seed,
                args.runs,
                env,
                faults=tuple(args.fault or FAULTS),
                log=log,
                only=args.run,
                minutes=args.minutes,
                pause_s=None if args.pause_ms is None else args.pause_ms / 1000,
            )
        print(f"\nseed {args.seed}, {time.monotonic() - began:.0f} s")
        print(summary.table())
        return 0 if not summary.failed else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
