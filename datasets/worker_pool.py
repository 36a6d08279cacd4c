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
    # The workers start with SIGINT blocked, and a signal mask survives exec: from its first instruction on, a worker
    # never receives Ctrl-C, not even while it still imports the entry script (a pool initializer runs after that
    # import, too late). All of them start here, inside the block, rather than one per submit; a Ctrl-C pressed in
    # this moment stays pending and reaches the main process when the mask is put back.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool._launch_processes()  # Python 3.11+ starts spawn workers lazily; this starts them all now
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        yield pool
    except BaseException:
        for process in list(pool._processes.values()):  # Python < 3.14 has no public terminate_workers()
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
