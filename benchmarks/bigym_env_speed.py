"""BiGym adapter throughput: control steps per second with camera observations, fast rendering on and off.

    PYTHONPATH=. .venv/bin/python benchmarks/bigym_env_speed.py [--task DishwasherClose] [--steps 30]

One "step" is BiGymEnv.step for one environment: the physics sub-steps (500 Hz / control frequency) plus
rendering every camera. The action holds the reset pose (absolute arm targets 0, no base motion), so the
rate measures the simulator and renderer, not a policy. Each setting runs in a fresh process (renderer
settings are fixed per GL context); reported: median over blocks of steps, plus the reset time.
"""

import argparse
import multiprocessing as mp
import statistics
import time


def measure(task: str, cameras: list[str], image_size: int, control_frequency: int, fast: bool, steps: int,
            queue):
    import numpy as np

    from env.bigym_env import BiGymEnv

    env = BiGymEnv(task, 1, cameras, image_size, "absolute", control_frequency, steps, fast_rendering=fast)
    started = time.perf_counter()
    env.reset(seed=0)
    reset_s = time.perf_counter() - started
    action = np.zeros((1, env.action_dim), np.float32)
    env.step(action)  # warm-up
    blocks = []
    for _ in range(max(1, steps // 10)):
        started = time.perf_counter()
        for _ in range(10):
            env.step(action)
        blocks.append(10 / (time.perf_counter() - started))
    env.close()
    queue.put((statistics.median(blocks), reset_s))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="DishwasherClose")
    parser.add_argument("--cameras", nargs="*", default=["head", "left_wrist", "right_wrist"])
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--control-frequency", type=int, default=50)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    context = mp.get_context("spawn")  # a clean process per setting: no shared GL state or torch threads
    print(f"{args.task}, cameras {args.cameras} at {args.image_size}x{args.image_size}, "
          f"{args.control_frequency} Hz control ({500 // args.control_frequency} physics steps per action)")
    for fast in (True, False):
        queue = context.Queue()
        worker = context.Process(target=measure, args=(args.task, args.cameras, args.image_size,
                                                       args.control_frequency, fast, args.steps, queue))
        worker.start()
        rate, reset_s = queue.get()
        worker.join()
        print(f"  fast_rendering={str(fast):<5}  {rate:6.1f} steps/s   reset {reset_s:.2f} s")


if __name__ == "__main__":
    main()
