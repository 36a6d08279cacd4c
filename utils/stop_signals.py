"""Stopping a training run on purpose: Ctrl-C (SIGINT), or SIGTERM, which a cluster scheduler sends before it
pre-empts a job, ends the run with last.pt saved and one line saying how to continue, not with a traceback.

    the first signal        the step in progress finishes, last.pt is saved, and the run ends with
                            `stopped: SIGTERM at iteration 37 of 60; the last good checkpoint is ... (iteration 37);
                            continue with: python <script> resume=<run>/last.pt`
    a second signal         stops at once; last.pt is the last completed save (writes are atomic)
    during a validation     the pass stops between two batches; last.pt holds the iteration with its validation,
    pass                    evaluation and saves pending, and the resumed run runs them first
    during a simulator      stops at once too: last.pt was saved just before the evaluation, marked pending, and
    evaluation              the resumed run runs that evaluation first (BiGym's DishwasherClose takes 37 min)

Exit status 130 after SIGINT, 143 after SIGTERM (128 + the signal's number, the shell's convention). Under torchrun
the ranks agree every step on whether to stop (max_over_ranks), so that a signal reaching any of them stops all of
them after the same iteration (tests/test_distributed.py, gloo; NCCL is untested); torchrun then reports the ranks'
exit status 143 as a failed run, below the one line.
"""

import contextlib
import os
import signal

from env.errors import RunStopped
from utils.distributed import max_over_ranks
from utils.run_setup import Run
from utils.training_checkpoints import resume_note


class StopSignals:
    """The context train()'s loop runs in: SIGINT and SIGTERM handled as above, the previous handlers put back at
    its end."""

    def __init__(self, run: Run):
        self.run = run
        self.received = 0  # the first stop signal's number; 0: none yet
        self.stop_at_once = False  # True while stopping at once loses nothing that last.pt does not hold
        self.previous_handlers = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous_handlers[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        for signum, handler in self.previous_handlers.items():
            # A stopped run ignores further signals on its way out, so that its last line gets out: under torchrun,
            # the launcher sends SIGTERM to the ranks still running as soon as one of them has exited.
            signal.signal(signum, signal.SIG_IGN if exc_type is RunStopped else handler)

    def _on_signal(self, signum, frame):
        if self.stop_at_once:
            self.end_run(signum, "during the simulator evaluation: stopped at once")
        if self.received:
            self.end_run(signum, "again: stopped at once, without the step in progress")
        self.received = signum
        if self.run.distributed.is_main:  # os.write, not print: the handler may interrupt a print to stderr
            os.write(2, f"\n[stop] {signal.Signals(signum).name}: stopping after this step, once last.pt is saved "
                        f"(a second signal stops at once)\n".encode())

    def requested(self) -> int:
        """The stop signal to end the run with after this step, 0 to go on; the same on every rank."""
        return max_over_ranks(self.received)

    def end_run(self, signum: int, what: str, every_rank: bool = False):
        """Stop with one line. every_rank: every rank calls this after the same iteration; none leaves before rank 0
        has written last.pt and read back what it says (torchrun ends the other ranks once one has exited)."""
        message = f"{signal.Signals(signum).name} {what}; {resume_note(self.run)}"
        if every_rank:
            max_over_ranks(0)  # a barrier
        raise RunStopped(message, 128 + signum)

    @contextlib.contextmanager
    def stopping_at_once(self):
        """A block in which a stop signal ends the run at once: a simulator evaluation, just after last.pt was
        saved with the evaluation pending. Under torchrun a rank stopped in it leaves the others waiting for its
        share of the episodes until torchrun ends them (30 s by default); last.pt is already complete."""
        signum = self.requested()
        if signum:
            self.end_run(signum, "before the simulator evaluation: stopped")
        self.stop_at_once = True
        try:
            yield
        finally:
            self.stop_at_once = False
