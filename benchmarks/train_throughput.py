"""Training-step throughput of our ACT against LeRobot's ACT, plus the replay-buffer sampler's rate.

    bash benchmarks/install_lerobot.sh                       # once: LeRobot 0.4.4 into benchmarks/.lerobot_site
    PYTHONPATH=. .venv/bin/python benchmarks/train_throughput.py [--ablation] [--help for sizes]

What one "step" is, on both sides: zero_grad, forward (CVAE training loss), backward, AdamW step, on one
batch that already sits in memory (random tensors made up front; same values for both sides).
Both models are built with the same ACT hyperparameters, cameras, image size, batch size and torch
threads, randomly initialised (no hub here), with FrozenBatchNorm2d in the ResNet18 because LeRobot
always freezes the backbone's BN (ours does too with ImageNet weights; random-init ours uses BatchNorm2d,
shown as its own ablation row). Differences that remain, all small and said out loud:
  * LeRobot gets its inputs already normalised (its processor pipeline runs outside the model); ours
    normalises state/actions and converts uint8 images to ImageNet-normalised floats inside the step.
  * LeRobot needs an image or an "environment state" input; for the state-only setting it gets the state
    as both robot state and environment state, i.e. one more encoder token than ours (3 vs 2).
  * No gradient clipping on either side. On CUDA both run under bf16 autocast. On CPU "ours" runs as our
    training does by default (precision=auto: bf16 autocast where the CPU has AMX / AVX512-BF16, else fp32) and
    LeRobot as a user runs it (fp32); "ours-fp32" is the like-for-like row, both in fp32.

Rows: "ours" runs as our training scripts do on CPU, with glibc's malloc reusing freed memory
(utils/allocator.py); "lerobot" runs as LeRobot's do, with the default allocator; "lerobot+reuse" is LeRobot
given our setting, so "ours / lerobot+reuse" (printed as "model code alone") compares the model code alone.

Each implementation runs in its own process (own memory high-water mark; LeRobot's site-packages are
seen only there). The parent alternates blocks of steps between them so that load from other jobs on
the machine hits all alike, and reports the median over blocks of samples per wall-clock second and of
samples per CPU-second of the worker (all its threads). On a machine shared with other jobs the second
is the steadier measure of the work each implementation does; the first is what training would see.

Memory, measured in a separate worker per implementation after the timing (a few steps): peak RSS during
those steps minus the RSS just before the first one, i.e. what training adds on top of the built model and
the prepared batch: activations, gradients, AdamW state, transient buffers. In that worker glibc's malloc is told to
give every block of 64 KiB or more its own mapping, returned to the system when freed, so the RSS
high-water mark follows the memory actually in use rather than what the allocator happens to keep
cached (that caching moved the plain figure by +-50 MiB between runs). On CUDA the script reports
torch.cuda.max_memory_allocated instead.
"""

import argparse
import ctypes
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
LEROBOT_SITE = REPO / "benchmarks" / ".lerobot_site"

# name -> (number of cameras, image side). Batch sizes come from the command line.
SETTINGS = {
    "state": (0, 0),
    "cam1_128": (1, 128),
    "cam3_84": (3, 84),  # BiGym: head + two wrist cameras at 84x84
}
STATE_DIM, ACTION_DIM = 16, 16

# Variants of our implementation; "ours" is the fast one used in the headline table, the others are the
# ablation (--ablation), each one change away from its neighbour:
#   frozen_bn      FrozenBatchNorm2d in the backbone (as with ImageNet weights, and as LeRobot)
#   adamw          torch.optim.AdamW implementation: "default" (per-tensor loop on CPU) or "fused"
#   channels_last  conv weights, hence feature maps, in NHWC: the layout oneDNN/cuDNN convolutions prefer
#   cpu_fast_paths models/fast_cpu.py's layers swapped in (ACTPolicy's default); False: the plain layers only
#   compile        torch.compile of the policy (--compile)
#   bf16           bf16 autocast on CPU: unless set, as training's precision=auto picks it (on where the CPU has
#                  bf16 matrix units; always on for CUDA). "ours-fp32" turns it off: the like-for-like row
#   models_from    import `models` from the --before folder instead of the repository: the code before a
#                  change, timed in the same interleaved run
#   reuse_memory   glibc malloc keeps freed memory (utils.allocator.reuse_freed_memory), as our training scripts
#                  run on CPU; True unless said otherwise. "lerobot+reuse" is LeRobot given the same setting,
#                  so ours / lerobot+reuse compares the model code alone.
OUR_VARIANTS = {
    "ours": dict(frozen_bn=True, adamw="fused"),
    "ours-fp32": dict(frozen_bn=True, adamw="fused", bf16=False),
    "ours-reuse": dict(frozen_bn=True, adamw="fused", reuse_memory=False),
    "ours-before": dict(frozen_bn=True, adamw="default", models_from=True),
    "ours-plain": dict(frozen_bn=True, adamw="default"),
    "ours-fastcpu": dict(frozen_bn=True, adamw="fused", cpu_fast_paths=False),
    "ours+cl": dict(frozen_bn=True, adamw="fused", channels_last=True),
    "ours-bn": dict(frozen_bn=False, adamw="fused"),
    "ours+compile": dict(frozen_bn=True, adamw="fused", compile=True),
}
IMAGE_ONLY_VARIANTS = ("ours+cl", "ours-bn")  # without cameras they are "ours"


# --------------------------------------------------------------------------------------------------
# Workers: one process per implementation and setting
# --------------------------------------------------------------------------------------------------
def make_data(args, num_cameras: int, image_size: int, batch_size: int, device):
    """Raw batch in our dataset's format; every worker draws the same values from the same seed."""
    gen = torch.Generator().manual_seed(0)
    batch = {
        "state": torch.randn(batch_size, 1, STATE_DIM, generator=gen),
        "actions": torch.randn(batch_size, args.chunk_size, ACTION_DIM, generator=gen),
        # Every fourth sample runs past its episode end halfway through the chunk.
        "is_pad": (torch.arange(args.chunk_size) >= args.chunk_size // 2)
        & (torch.arange(batch_size)[:, None] % 4 == 0),
    }
    if num_cameras:
        shape = (batch_size, 1, num_cameras, 3, image_size, image_size)
        batch["images"] = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
    return {k: v.to(device) for k, v in batch.items()}


def make_adamw(params, kind: str, lr: float):
    fused = True if kind == "fused" else None  # None: torch's default, the per-tensor loop on CPU
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4, fused=fused)


def build_ours(args, variant: dict, num_cameras: int, raw: dict, device):
    from utils.cpu_features import cpu_bf16_units  # before --before's folder goes first on the path

    if variant.get("models_from"):
        sys.path.insert(0, args.before)
    from models.act import ACT
    from models.policy import ACTPolicy

    model = ACT(STATE_DIM, ACTION_DIM, num_cameras, chunk_size=args.chunk_size, d_model=args.d_model,
                nhead=args.nhead, dim_feedforward=args.dim_feedforward, num_encoder_layers=args.enc_layers,
                num_decoder_layers=args.dec_layers, num_style_encoder_layers=args.vae_layers,
                dropout=args.dropout, latent_dim=args.latent_dim, pretrained_backbone=False,
                frozen_batchnorm=variant["frozen_bn"])
    stats = {"state_mean": np.zeros(STATE_DIM), "state_std": np.ones(STATE_DIM),
             "action_mean": np.zeros(ACTION_DIM), "action_std": np.ones(ACTION_DIM)}
    fast_paths = {} if variant.get("cpu_fast_paths", True) else {"cpu_fast_paths": False}  # "before" code lacks it
    policy = ACTPolicy(model, stats, kl_weight=10.0, **fast_paths).to(device).train()
    if variant.get("channels_last") and num_cameras:
        # NHWC conv weights are enough: the first convolution then returns NHWC and the rest follows.
        policy = policy.to(memory_format=torch.channels_last)
    optimizer = make_adamw([p for p in policy.parameters() if p.requires_grad], variant["adamw"], args.lr)
    forward = torch.compile(policy) if variant.get("compile") else policy
    bf16 = device.type == "cuda" or variant.get("bf16", bool(cpu_bf16_units()))

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = forward(raw)["loss"]
        loss.backward()
        optimizer.step()

    return policy, step


def build_lerobot(args, num_cameras: int, image_size: int, raw: dict, device):
    # Hugging Face `datasets` (imported by lerobot) must win over this repository's `datasets` package.
    sys.path.insert(0, str(LEROBOT_SITE))
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy as LeRobotACTPolicy

    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,))}
    if num_cameras == 0:
        inputs["observation.environment_state"] = PolicyFeature(FeatureType.ENV, (STATE_DIM,))
    for cam in range(num_cameras):
        inputs[f"observation.images.cam{cam}"] = PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size))
    config = ACTConfig(
        input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        device=device.type, pretrained_backbone_weights=None, chunk_size=args.chunk_size,
        n_action_steps=args.chunk_size, dim_model=args.d_model, n_heads=args.nhead,
        dim_feedforward=args.dim_feedforward, n_encoder_layers=args.enc_layers, n_decoder_layers=args.dec_layers,
        n_vae_encoder_layers=args.vae_layers, latent_dim=args.latent_dim, dropout=args.dropout, kl_weight=10.0,
    )
    policy = LeRobotACTPolicy(config).to(device).train()
    # LeRobot's processors normalise before the model: give it what they would produce.
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    batch = {"observation.state": raw["state"][:, 0], "action": raw["actions"], "action_is_pad": raw["is_pad"]}
    if num_cameras == 0:
        batch["observation.environment_state"] = raw["state"][:, 0]
    for cam in range(num_cameras):
        batch[f"observation.images.cam{cam}"] = (raw["images"][:, 0, cam].float() / 255.0 - mean) / std
    # LeRobot's training script: AdamW from its optimiser preset (torch defaults otherwise) on its param groups.
    optimizer = config.get_optimizer_preset().build(policy.get_optim_params())
    optimizer.param_groups[0]["lr"] = optimizer.param_groups[1]["lr"] = args.lr

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):  # as ours
            loss, _ = policy.forward(batch)
        loss.backward()
        optimizer.step()

    return policy, step


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss():
    """Start the high-water mark afresh (Linux >= 4.0), so building the model does not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reuses_freed_memory(impl: str) -> bool:
    """Whether a timing worker runs with utils.allocator.reuse_freed_memory (see OUR_VARIANTS)."""
    if impl.startswith("lerobot"):
        return impl == "lerobot+reuse"
    return OUR_VARIANTS[impl].get("reuse_memory", True)


def worker(conn, impl: str, setting: str, batch_size: int, args, measure_memory: bool = False):
    """Builds one implementation for one setting.

    Timing worker: serves ("run", n_steps) -> (wall s, CPU s) until ("stop",).
    Memory worker (measure_memory): runs warm-up + one block of steps and sends the peak memory growth.
    """
    if args.device == "cpu" and measure_memory:
        M_MMAP_THRESHOLD = -3  # from glibc's malloc.h; fixing it also turns off glibc's dynamic threshold
        if not ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 64 * 1024):
            print("warning: mallopt failed (not glibc?): memory figures include allocator caching")
    elif args.device == "cpu" and reuses_freed_memory(impl):
        from utils.allocator import reuse_freed_memory  # only the allocator setting: no torch, no `datasets`

        if not reuse_freed_memory():
            print(f"warning: mallopt failed (not glibc?): {impl} runs with the default allocator")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    num_cameras, image_size = SETTINGS[setting]
    raw = make_data(args, num_cameras, image_size, batch_size, device)
    if impl.startswith("lerobot"):
        policy, step = build_lerobot(args, num_cameras, image_size, raw, device)
    else:
        policy, step = build_ours(args, OUR_VARIANTS[impl], num_cameras, raw, device)

    if measure_memory:
        baseline = rss_bytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()
        for _ in range(args.warmup + args.steps):
            step()
        conn.send(torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes() - baseline)
        return

    conn.send(sum(p.numel() for p in policy.parameters() if p.requires_grad))
    while True:
        command = conn.recv()
        if command[0] != "run":
            return
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(command[1]):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # the only host sync: at the end of a timed block
        conn.send((time.perf_counter() - start, time.process_time() - start_cpu))


def start_worker(impl: str, setting: str, batch_size: int, args, measure_memory: bool = False):
    """A worker in a fresh process (spawn: no state inherited from this one). Returns (pipe end, process)."""
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    process = ctx.Process(target=worker, args=(child_end, impl, setting, batch_size, args, measure_memory),
                          daemon=True)
    process.start()
    return parent_end, process


def peak_memory(impl: str, setting: str, batch_size: int, args) -> int:
    """Peak memory growth of a few training steps, in a fresh memory worker (see the module docstring)."""
    conn, process = start_worker(impl, setting, batch_size, args, measure_memory=True)
    memory = conn.recv()
    process.join()
    return memory


# --------------------------------------------------------------------------------------------------
# Parent: interleaved timing
# --------------------------------------------------------------------------------------------------
def compare(impls: list[str], setting: str, batch_size: int, args) -> dict:
    """Median samples/s and peak memory per implementation, timed in alternating blocks."""
    workers = {impl: start_worker(impl, setting, batch_size, args) for impl in impls}
    num_params = {impl: conn.recv() for impl, (conn, _) in workers.items()}
    for conn, _ in workers.values():  # warm-up (allocator, oneDNN primitive caches, AdamW state, compile)
        conn.send(("run", args.warmup))
        conn.recv()
    rates = {impl: [] for impl in impls}
    cpu_rates = {impl: [] for impl in impls}
    for rep in range(args.reps):
        # Alternate the order so neither side always runs right after the other.
        for impl in impls if rep % 2 == 0 else impls[::-1]:
            conn = workers[impl][0]
            conn.send(("run", args.steps))
            wall, cpu = conn.recv()
            rates[impl].append(batch_size * args.steps / wall)
            cpu_rates[impl].append(batch_size * args.steps / cpu)
    for conn, process in workers.values():
        conn.send(("stop",))
        process.join()
    # One at a time, after the timing: a memory worker must not share the machine with a timed one. Memory
    # workers measure memory in use, whatever the allocator setting, so "x+reuse" and "x-reuse" share x's.
    def model_code(impl: str) -> str:
        return impl.removesuffix("+reuse").removesuffix("-reuse")

    memory = {}
    for code in dict.fromkeys(map(model_code, impls)):
        memory[code] = peak_memory(code, setting, batch_size, args)
    return {impl: {"rate": statistics.median(rates[impl]), "spread": (min(rates[impl]), max(rates[impl])),
                   "cpu_rate": statistics.median(cpu_rates[impl]), "params": num_params[impl],
                   "memory": memory[model_code(impl)]}
            for impl in impls}


def sampler_rate(args) -> float:
    """Batches/s of ChunkDataset + make_train_loader on a synthetic in-memory rgb dataset (one 128x128 camera)."""
    from datasets.chunk_dataset import ChunkDataset, make_train_loader  # only here: workers must not see it

    rng = np.random.default_rng(0)
    episodes = [{"state": rng.standard_normal((args.episode_len, STATE_DIM), dtype=np.float32),
                 "actions": rng.standard_normal((args.episode_len, ACTION_DIM), dtype=np.float32),
                 "images": rng.integers(0, 256, (args.episode_len, 1, 3, 128, 128), dtype=np.uint8)}
                for _ in range(args.episodes)]
    dataset = ChunkDataset(episodes, args.chunk_size, action_type="absolute")
    loader = iter(make_train_loader(dataset, args.image_batch, seed=0, num_workers=args.loader_workers))
    for _ in range(5):
        next(loader)
    rates = []
    for _ in range(5):  # median of blocks, as for the training step: the machine may be shared
        start = time.perf_counter()
        for _ in range(args.sampler_batches):
            next(loader)
        rates.append(args.sampler_batches / (time.perf_counter() - start))
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--state-batch", type=int, default=64)
    parser.add_argument("--image-batch", type=int, default=16)
    parser.add_argument("--ablation", action="store_true",
                        help="also time the variants of ours (what each optimisation buys)")
    parser.add_argument("--compile", action="store_true", help="include torch.compile in the ablation")
    parser.add_argument("--before", metavar="DIR",
                        help="ablation row 'ours-before': a folder holding an older models/ package to compare")
    # Default: as many threads as torch would use for training here. On a machine shared with other jobs use
    # --threads 1: OpenMP threads that keep waiting for a busy core time the neighbours, not the code
    # (measured on the 2-core machine under load: a ResNet18 step 10x slower with 2 threads than with 1).
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads in every worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2, help="steps per implementation before timing")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
    parser.add_argument("--reps", type=int, default=5, help="timed blocks per implementation (median)")
    # ACT hyperparameters, identical on both sides: LeRobot's defaults with BiGym's chunk of 16.
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--nhead", type=int, default=8)
    parser.add_argument("--dim-feedforward", type=int, default=3200)
    parser.add_argument("--enc-layers", type=int, default=4)
    parser.add_argument("--dec-layers", type=int, default=1)
    parser.add_argument("--vae-layers", type=int, default=4)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-5)
    # Data path
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--episode-len", type=int, default=60)
    parser.add_argument("--sampler-batches", type=int, default=50, help="per timed block (5 blocks)")
    parser.add_argument("--loader-workers", type=int, default=0)
    args = parser.parse_args()

    if not LEROBOT_SITE.is_dir():
        sys.exit(f"{LEROBOT_SITE} missing: run bash benchmarks/install_lerobot.sh first")
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads; ACT d_model={args.d_model} "
          f"heads={args.nhead} ff={args.dim_feedforward} enc/dec/vae layers={args.enc_layers}/{args.dec_layers}/"
          f"{args.vae_layers} latent={args.latent_dim} chunk={args.chunk_size} dropout={args.dropout}")
    print(f"median of {args.reps} blocks x {args.steps} steps after {args.warmup} warm-up steps\n")

    header = (f"{'setting':8} {'batch':>5}  {'impl':13} {'samples/s':>9} {'(min-max)':>13} {'vs lerobot':>10} "
              f"{'per CPU-s':>9} {'vs lerobot':>10} {'mem MiB':>8}")
    print(header)
    print("-" * len(header))
    results = {}
    for setting in args.settings:
        batch_size = args.state_batch if SETTINGS[setting][0] == 0 else args.image_batch
        impls = ["ours", "ours-fp32", "lerobot", "lerobot+reuse"]
        if args.ablation:
            wanted = {"ours-before": args.before, "ours+compile": args.compile}
            impls += [v for v in OUR_VARIANTS if v not in impls and wanted.get(v, True)
                      and (SETTINGS[setting][0] > 0 or v not in IMAGE_ONLY_VARIANTS)]
        results[setting] = compare(impls, setting, batch_size, args)
        peer = results[setting]["lerobot"]
        for impl, r in results[setting].items():
            spread = f"({r['spread'][0]:.1f}-{r['spread'][1]:.1f})"
            print(f"{setting:8} {batch_size:5d}  {impl:13} {r['rate']:9.1f} {spread:>13} "
                  f"{r['rate'] / peer['rate']:9.2f}x {r['cpu_rate']:9.1f} {r['cpu_rate'] / peer['cpu_rate']:9.2f}x "
                  f"{r['memory'] / 2**20:8.0f}", flush=True)
        same_allocator = results[setting]["ours-fp32"]["rate"] / results[setting]["lerobot+reuse"]["rate"]
        print(f"{setting:8} {batch_size:5d}  model code alone, both fp32 (ours-fp32 / lerobot+reuse): "
              f"{same_allocator:.2f}x")

    if "cam1_128" in results:
        batches_per_s = sampler_rate(args)
        train_steps_per_s = results["cam1_128"]["ours"]["rate"] / args.image_batch
        print(f"\nreplay-buffer sampler (ChunkDataset + make_train_loader, num_workers={args.loader_workers}, "
              f"{args.episodes}x{args.episode_len} steps, one 128x128 camera, batch {args.image_batch}): "
              f"{batches_per_s:.1f} batches/s vs {train_steps_per_s:.2f} training steps/s "
              f"({batches_per_s / train_steps_per_s:.0f}x headroom)")


if __name__ == "__main__":
    main()
