"""Every config key, with its type and default, written once.

A run's config is one of the classes at the bottom, chosen by `source`, the kind of run: ManiSkillRun,
BiGymRun, AlohaRun (SimulatorRun: they evaluate in a simulator) or DatasetRun (your own recordings, no simulator).
They share RunConfig's keys (experiment, data handling, optimisation, logging, deployment, `model:`, `wandb:`).
The defaults below are the ManiSkill RGB setting; each entry script's default config file
(configs/ACT_<source>_config.yaml) names its source and holds only what differs, like the user's own files.
utils/config.py layers the files and `key=value` overrides over these defaults and checks every value against
the types written here (`int | None`: an integer or null; Literal: one of the listed strings) and the ranges in
its VALUE_RULES.

A new simulator adds its class here (a SimulatorRun with its own keys) and one line to RUN_CONFIGS.
"""

from dataclasses import asdict, dataclass, field
from typing import Literal

from models.config import ModelConfig


@dataclass
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with an API key, else offline
    project: str = "ACT_Implementation"
    entity: str | None = None


@dataclass
class RunConfig:
    """The keys every run has."""

    # --- experiment ---
    source: str = ""  # the kind of run (maniskill | bigym | aloha | dataset): set by each subclass, checked on load
    exp_name: str = "act"
    seed: int = 1
    mode: Literal["train", "eval"] = "train"  # eval needs checkpoint=...
    checkpoint: str | None = None  # mode=eval: the .pt file, or a folder from scripts/export_policy.py
    resume: str | None = None  # continue a run from one of its checkpoints (e.g. ckpts/<run>/last.pt)
    device: str = "auto"  # auto | cpu | cuda | cuda:<index>
    ckpt_dir: str = "ckpts"  # relative paths are relative to the repository

    # --- the demonstrations as training data ---
    # How a chunk running past the end of its episode is padded: absolute (joint/pose targets: the last action
    # repeats) | delta (zeros). ManiSkill adds auto (from control_mode: *delta* -> delta).
    action_type: Literal["absolute", "delta"] = "absolute"
    val_fraction: float = 0.1  # whole episodes held out for the validation loss
    action_normalization: Literal["mean_std", "min_max"] = "mean_std"  # min_max: each action dim onto [-1, 1]
    frame_stack: int = 1
    num_workers: int = 0  # 0 = deterministic, step-debuggable loading in the main process

    # --- optimisation ---
    total_iters: int = 30000
    batch_size: int = 256  # the global batch (under torchrun split over the processes)
    lr: float = 1.0e-4
    lr_backbone: float = 1.0e-5
    weight_decay: float = 1.0e-4
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after the warm-up
    warmup_iters: int = 500
    kl_warmup_iters: int = 0  # > 0: the KL weight rises linearly from 0 to model.kl_weight over this many
    #                           iterations, against posterior collapse (benchmarks/HISTORY.md); 0 = constant
    grad_clip: float = 10.0
    ema_decay: float = 0.0  # > 0 keeps an EMA of the weights for evaluation and deployment (e.g. 0.999)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on a CPU with bf16 matrix units
    #   (AMX / AVX512-BF16), fp32 elsewhere (CUDA: bf16 measured no faster on an H200); utils/optimization.py
    compile: bool = False  # torch.compile the training step

    # --- logging, validation, checkpoints ---
    log_frequency: int = 50
    val_frequency: int = 1000
    save_frequency: int = 5000
    keep_checkpoints: int = 3  # newest iter_*.pt kept (0 = all); best.pt and last.pt always stay

    # --- deployment: how chunks become actions (utils/deploy.py; the simulator evaluation uses the same) ---
    temporal_ensemble: bool = True
    ensemble_k: float = 0.01  # weights exp(-k * i), i = 0 the oldest prediction
    query_frequency: int | None = None  # open loop only (temporal_ensemble=false): steps per chunk, null = chunk_size

    model: ModelConfig = field(default_factory=ModelConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SimulatorRun(RunConfig):
    """The keys of every run that evaluates its policy in a simulator."""

    env_id: str = ""
    max_episode_steps: int = 100  # control steps per evaluation episode
    num_demos: int = 100  # -1: every demo there is
    demo_workers: int = 0  # processes making demos side by side (ManiSkill plans and replays, ALOHA renders, BiGym
    #   solves and re-renders into episode_cache_dir); 0: one per CPU core, 1: all in this process
    video_dir: str = "videos"
    eval_frequency: int = 5000
    num_eval_episodes: int = 50  # 0: no simulator evaluation (best.pt then follows the validation L1)
    num_eval_envs: int = 10  # environments stepped together (batched policy queries)
    eval_seed: int = 1000000  # first reset seed of the test episodes (demos use seeds from 0)
    capture_video: bool = True
    num_video_episodes: int = 2


@dataclass
class ManiSkillRun(SimulatorRun):
    """ACT_for_Maniskill.py. control_mode and max_episode_steps: tasks with a recipe (TASK_RECIPES in
    datasets/maniskill_demos.py) get their own unless a config file or the command line sets them."""

    source: str = "maniskill"
    env_id: str = "PickCube-v1"
    obs_mode: Literal["state", "rgb", "rgbd"] = "rgb"
    control_mode: str = "pd_ee_delta_pos"
    cameras: list[str] = field(default_factory=lambda: ["base_camera"])  # ManiSkill sensor names (rgb/rgbd modes)
    image_size: int | None = None  # camera images resized (area averaging) to image_size x image_size; null: as
    #                                rendered
    image_crop: list[int] | None = None  # [top, left, height, width] window of the camera image, cut before
    #                                      resizing; null = all
    sim_backend: Literal["auto", "physx_cpu", "physx_cuda"] = "auto"  # auto: physx_cuda with CUDA, else physx_cpu
    render_backend: Literal["auto", "cpu", "gpu"] = "auto"  # auto: gpu with CUDA, else cpu (software Vulkan)
    action_type: Literal["auto", "absolute", "delta"] = "auto"
    # demonstrations, generated with ManiSkill's motion planner when the file is missing
    demo_dir: str = "demos"
    demo_path: str | None = None  # null: <demo_dir>/<env_id>/<num_demos>demos.<obs_mode>.<control_mode>.h5


@dataclass
class BiGymRun(SimulatorRun):
    """ACT_for_bigym.py (Unitree H1, bimanual mobile manipulation). With demo_source=scripted the task's recipe
    (SCRIPTED_TASKS in datasets/bigym_solvers.py) fills in the keys the user leaves alone."""

    source: str = "bigym"
    env_id: str = "DishwasherClose"  # any BiGym task, class name or snake_case (dishwasher_close, move_plate, ...)
    cameras: list[str] = field(default_factory=lambda: ["head", "left_wrist", "right_wrist"])  # []: proprioception
    image_size: int = 84  # square camera images
    # action_type: absolute | delta arm joint targets (the floating base is delta in both)
    floating_dofs: list[str] = field(default_factory=lambda: ["pelvis_x", "pelvis_y", "pelvis_rz"])  # base joints in
    #   the action; add pelvis_z to crouch (DishwasherClose's scripted solver needs it)
    base_action: Literal["delta", "absolute"] = "delta"  # delta: BiGym's per-step base deltas | absolute: the base
    #   target pose (turned into BiGym's deltas when stepping, so errors do not add up)
    control_frequency: int = 25  # Hz; demos are 500 Hz and are decimated to this (must divide 500, >= 20)
    joint_velocities: bool = True  # the state holds joint positions AND velocities; false: positions only
    elapsed_time: bool = False  # the state ends with step / max_episode_steps (for demos on a fixed timetable)
    proprioception: bool = True  # false: the state is the elapsed time alone (needs elapsed_time: true)
    fast_rendering: bool = False  # no shadows/reflections/MSAA, ~5x faster on CPU; demos re-render to match
    perturbed_starts: bool = False  # evaluation starts: false = BiGym's own reset (the paper's protocol); true =
    #   held-out perturbed starts (robot base/arms and the task's door/drawer moved, see env/bigym_env.py)
    # demonstrations, both sources through BiGym's DemoStore
    demo_source: Literal["human", "scripted"] = "human"  # human: BiGym's release (downloaded on first use) |
    #   scripted: made here by our solvers when fewer than num_demos exist
    demo_cache_root: str | None = None  # DemoStore root. null: ~/.bigym (human) or demos/bigym_scripted (scripted)
    demo_noise: float = 0.0  # scripted demos: DART noise (rad on the arm joints) the robot is driven with
    episode_cache_dir: str | None = "demos/bigym"  # re-rendered episodes, per camera/size/frequency/rendering
    drop_unsolved_demos: bool = False  # train only on demos that still solve the task after re-simulation at
    #   control_frequency (decimating 500 Hz demos can turn a recorded success into a failure)


@dataclass
class AlohaRun(SimulatorRun):
    """ACT_for_aloha.py: ALOHA sim, the ACT paper's benchmark (gym-aloha's MuJoCo scenes, env/aloha_env.py), from
    scripted demos made here (datasets/aloha_scripted.py: seeds 0, 1, ...; evaluation from eval_seed) and read
    back through the own-data ALOHA HDF5 reader (datasets/aloha_hdf5.py)."""

    source: str = "aloha"
    env_id: Literal["transfer_cube", "insertion"] = "transfer_cube"  # the task
    max_episode_steps: int = 400  # 8 s at 50 Hz, the paper's episode length (gym-aloha registers 300)
    num_demos: int = 50  # the paper's; -1: every demo in the folder
    cameras: list[str] = field(default_factory=lambda: ["top"])  # the paper's; the scripted demos record top only
    #   (the scenes also have angle, front_close, left_pillar, right_pillar, left_wrist, right_wrist); []: none
    image_size: list[int] | None = None  # [height, width] every frame is resized to (area averaging), demos and
    #   rollouts alike; null: the native 480x640
    demo_dir: str = "demos/aloha"  # demos in <demo_dir>/<env_id>/episode_<i>.hdf5, made when fewer than num_demos
    frames: Literal["auto", "ram", "disk"] = "auto"  # where the demos' frames live while training, as the dataset
    #   runs' data.frames: 50 demos at 480x640 take 18.4 GB in RAM, so auto reads them per batch on a smaller machine


@dataclass
class AlohaHdf5Keys:
    """One episode_<i>.hdf5 per episode (datasets/aloha_hdf5.py); keys are HDF5 paths."""

    state: list[str] = field(default_factory=lambda: ["observations/qpos"])  # concatenated into the state
    action: str = "action"
    cameras: list[str] | None = None  # names under /observations/images; null: all of them, []: none
    shift_real_actions: bool = True  # sim=False files pair step t with action t-1, as the original ACT loader does


@dataclass
class LeRobotKeys:
    """LeRobotDataset v3.0 (datasets/lerobot_v3.py); keys are feature names in meta/info.json."""

    state: list[str] = field(default_factory=lambda: ["observation.state"])
    action: str = "action"
    cameras: list[str] | None = None  # video features, e.g. [observation.images.top]; null: all, []: none


@dataclass
class DataConfig:
    path: str | None = None  # the dataset folder (required)
    format: Literal["auto", "aloha_hdf5", "lerobot"] = "auto"  # auto: from what the folder holds
    image_size: list[int] | None = field(default_factory=lambda: [120, 160])  # [height, width] every frame is
    #   resized to when read, null: as recorded. RAM: steps x cameras x 3 x height x width bytes
    num_episodes: int = -1  # -1: every episode, else the first ones
    frames: Literal["auto", "ram", "disk"] = "auto"  # where the frames live while training: ram (decoded once and
    #   held), disk (ALOHA HDF5 only: read, decoded and resized per batch, in the DataLoader workers when
    #   num_workers > 0), auto: ram when they take at most half the available memory (datasets/own_data.py)
    aloha_hdf5: AlohaHdf5Keys = field(default_factory=AlohaHdf5Keys)
    lerobot: LeRobotKeys = field(default_factory=LeRobotKeys)


@dataclass
class DatasetRun(RunConfig):
    """ACT_for_dataset.py: your own robot's recordings, no simulator. best.pt follows the validation L1."""

    source: str = "dataset"
    data: DataConfig = field(default_factory=DataConfig)


RUN_CONFIGS = {"maniskill": ManiSkillRun, "bigym": BiGymRun, "aloha": AlohaRun, "dataset": DatasetRun}


def evaluates_in_simulator(cfg: RunConfig) -> bool:
    return isinstance(cfg, SimulatorRun) and cfg.num_eval_episodes > 0
