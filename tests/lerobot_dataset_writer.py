"""Write a small LeRobotDataset with the LeRobot package itself (benchmarks/install_lerobot.sh installs it).

Started by tests/test_own_data.py from outside the repository, with benchmarks/.lerobot_site on PYTHONPATH (our
own `datasets` package would shadow Hugging Face's inside it):
    python lerobot_dataset_writer.py OUT_FOLDER NUM_EPISODES
Episode e, step t: state = e * 100 + t + [0, 0.1, ..., 0.5], action = state + 0.5; camera "top" shows a red level
of 8 * t and a green level of 60 * e, camera "wrist" the negative of it (what a reader must give back).
"""

import sys

import numpy as np

HEIGHT, WIDTH, STATE_DIM = 48, 64, 6


def frame(episode: int, step: int) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[..., 0], image[..., 1] = 8 * step, 60 * episode
    return image


if __name__ == "__main__":
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # here: the test imports frame() without LeRobot

    out, num_episodes = sys.argv[1], int(sys.argv[2])
    vector = {"dtype": "float32", "shape": (STATE_DIM,), "names": [f"joint_{i}" for i in range(STATE_DIM)]}
    camera = {"dtype": "video", "shape": (HEIGHT, WIDTH, 3), "names": ["height", "width", "channels"]}
    features = {"observation.state": vector, "action": vector,
                "observation.images.top": camera, "observation.images.wrist": camera}
    dataset = LeRobotDataset.create("local/act_test", fps=10, features=features, root=out, use_videos=True)
    for episode in range(num_episodes):
        for step in range(20 + episode):
            state = episode * 100 + step + np.arange(STATE_DIM, dtype=np.float32) / 10
            dataset.add_frame({"observation.state": state, "action": state + 0.5, "task": "pick",
                               "observation.images.top": frame(episode, step),
                               "observation.images.wrist": 255 - frame(episode, step)})
        dataset.save_episode()
    dataset.finalize()
