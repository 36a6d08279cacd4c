"""The process pool that makes demonstrations on every core (ALOHA renders, ManiSkill plans and replays).

Ctrl-C in a terminal reaches the whole foreground process group, workers included: left alone, each worker prints
its own KeyboardInterrupt traceback, and leaving the pool waits for the tasks in progress (a minute or more each).
Here the workers never see SIGINT and the main process ends them at once when anything stops it, so a stopped run
ends with the entry script's one line. Nothing is lost: a demo file appears only once complete.
"""

import contextlib
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor


@contextlib.contextmanager
def demo_worker_pool(workers: int):
    """A ProcessPoolExecutor of `workers` spawned processes (spawn, not fork: the parent may hold torch's thread
    pools or a GL context, which a forked child can deadlock on)."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        _start_workers_deaf_to_ctrl_c(pool)
        yield pool
    except BaseException:
        # active_children(): the pool's workers, a worker stopped while starting included; non-daemon processes,
        # so one left running would hold the interpreter's exit.
        for process in multiprocessing.active_children():
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _start_workers_deaf_to_ctrl_c(pool: ProcessPoolExecutor):
    """Start every worker now with SIGINT blocked. A signal mask survives exec, so from its first instruction a
    worker never receives Ctrl-C, not even while it still imports the entry script (a pool initializer would run
    after that import, too late). A Ctrl-C pressed meanwhile is held back and delivered once all workers are up."""
    held = []
    handler = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool._launch_processes()  # Python 3.11+ starts spawn workers one per submit; this starts them all here
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, handler)
    if held:
        signal.raise_signal(signal.SIGINT)  # now to the real handler: KeyboardInterrupt, the workers terminated
