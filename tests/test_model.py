import bdb
import inspect
import sys

import numpy as np
import pytest
import torch

from models.act import (ACT, EncoderLayer, FeedForward, TransformerEncoder, act_loss, sine_embedding_1d,
                        sine_embedding_2d)
from models.fast_cpu import ClsOnlyEncoder, MaskDropout, ReluDropoutFeedForward, dropout_keep_mask
from models.policy import ACTPolicy

STATE_DIM, ACTION_DIM, CHUNK = 9, 4, 6
SMALL = dict(chunk_size=CHUNK, d_model=32, nhead=4, dim_feedforward=64, num_encoder_layers=2,
             num_decoder_layers=2, num_style_encoder_layers=2, latent_dim=8, pretrained_backbone=False)


def make_policy(num_cameras=0, image_channels=3, use_cvae=True, cpu_fast_paths=True, **sizes):
    torch.manual_seed(0)
    stats = {"state_mean": np.zeros(STATE_DIM), "state_std": np.ones(STATE_DIM),
             "action_mean": np.zeros(ACTION_DIM), "action_std": np.ones(ACTION_DIM)}
    model = ACT(STATE_DIM, ACTION_DIM, num_cameras=num_cameras, image_channels=image_channels, use_cvae=use_cvae,
                **{**SMALL, **sizes})
    return ACTPolicy(model, stats, kl_weight=10.0, cpu_fast_paths=cpu_fast_paths)


def make_batch(batch=3, num_cameras=0, image_channels=3, size=64):
    data = {"state": torch.randn(batch, 1, STATE_DIM), "actions": torch.randn(batch, CHUNK, ACTION_DIM),
            "is_pad": torch.zeros(batch, CHUNK, dtype=torch.bool)}
    data["is_pad"][0, -2:] = True
    if num_cameras:
        data["images"] = torch.randint(0, 256, (batch, 1, num_cameras, image_channels, size, size), dtype=torch.uint8)
    return data


@pytest.mark.parametrize("num_cameras,channels", [(0, 3), (1, 3), (3, 3), (2, 4)])
def test_output_shapes(num_cameras, channels):
    policy = make_policy(num_cameras, channels)
    batch = make_batch(num_cameras=num_cameras, image_channels=channels)
    state = batch["state"].flatten(1)
    images = batch["images"].flatten(1, 2).float() if num_cameras else None
    pred, (mu, logvar) = policy.model(state, images, batch["actions"], batch["is_pad"])
    assert pred.shape == (3, CHUNK, ACTION_DIM)
    assert mu.shape == logvar.shape == (3, 8)
    chunk = policy.predict_chunk(batch["state"], batch.get("images"))
    assert chunk.shape == (3, CHUNK, ACTION_DIM)


@pytest.mark.parametrize("num_cameras", [0, 2])
def test_loss_finite_and_reaches_every_parameter(num_cameras):
    policy = make_policy(num_cameras)
    losses = policy(make_batch(num_cameras=num_cameras))
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    no_grad = {n for n, p in policy.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)}
    # The decoder input is zeros (DETR/ACT), so layer 0's self-attention sees its value bias for every key: its
    # value weights get no gradient, its query/key weights at most attention dropout's noise (out_proj and
    # norm1 weights none while the biases are still at their zero init).
    assert no_grad <= {"model.decoder.layers.0.self_attn.in_proj_weight",
                       "model.decoder.layers.0.self_attn.out_proj.weight", "model.decoder.layers.0.norm1.weight"}
    assert "model.decoder.layers.1.self_attn.in_proj_weight" not in no_grad


def test_inference_is_deterministic_with_zero_latent():
    policy = make_policy(num_cameras=1).eval()
    batch = make_batch(num_cameras=1)
    first = policy.predict_chunk(batch["state"], batch["images"])
    second = policy.predict_chunk(batch["state"], batch["images"])
    assert torch.equal(first, second)
    # z = 0 at inference: the prediction equals feeding a zero latent explicitly.
    state, images = batch["state"].flatten(1), batch["images"].flatten(1, 2).float()
    pred, (mu, _) = policy.model(state, images)
    assert mu is None and torch.allclose(pred, first)


def test_cvae_off_has_no_style_encoder_and_no_kl():
    policy = make_policy(use_cvae=False)
    assert not hasattr(policy.model, "style_encoder")
    losses = policy(make_batch())
    assert losses["kl"].item() == 0.0 and torch.isfinite(losses["loss"])
    losses["loss"].backward()


def test_padded_steps_add_zero_but_count_in_the_l1_mean():
    # As the original ACT and LeRobot 0.4.4 (LeRobot's main divides by the valid elements): sum over valid steps /
    # all B*K*A elements, here 4 / 8.
    pred = torch.zeros(1, 4, 2)
    target = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [100.0, 100.0], [100.0, 100.0]]])
    is_pad = torch.tensor([[False, False, True, True]])
    assert act_loss(pred, target, is_pad, None, None, 10.0)["l1"].item() == pytest.approx(0.5)


def test_xavier_init_only_for_the_main_encoder_and_decoder(monkeypatch):
    """As the original ACT and LeRobot: the transformer's matrices are Xavier-initialised, the rest keeps PyTorch's
    defaults, except attention projections, which Xavier-initialise themselves (as nn.MultiheadAttention)."""
    xavier = []
    original = torch.nn.init.xavier_uniform_
    monkeypatch.setattr(torch.nn.init, "xavier_uniform_", lambda t, *a, **k: xavier.append(t) or original(t, *a, **k))
    model = ACT(STATE_DIM, ACTION_DIM, num_cameras=1, **SMALL)
    xavier_names = {name for name, p in model.named_parameters() if any(p is t for t in xavier)}
    expected = {name for name, p in model.named_parameters()
                if (name.split(".")[0] in ("encoder", "decoder") and p.dim() > 1) or name.endswith("in_proj_weight")}
    assert xavier_names == expected
    assert "style_encoder.layers.0.feedforward.0.weight" not in xavier_names
    # Embeddings keep N(0, 1): Xavier would give them a std of about sqrt(2 / (K + D)) = 0.23.
    assert model.action_queries.weight.std().item() > 0.7
def test_sine_embedding_1d_is_sin_and_cos_of_position_times_frequency():
    table = sine_embedding_1d(20, 16)
    frequencies = 10000.0 ** (-torch.arange(0, 16, 2) / 16)  # (8,): 1, 10000^(-1/8), ...
    torch.testing.assert_close(table[7, 0::2], torch.sin(7 * frequencies))
    torch.testing.assert_close(table[7, 1::2], torch.cos(7 * frequencies))
    # What makes it a position code: the similarity of two positions depends only on how far apart they are.
    torch.testing.assert_close(table[2] @ table[5], table[11] @ table[14])
    assert table[2] @ table[3] > table[2] @ table[9]


def test_sine_embedding_2d_codes_rows_and_columns_in_separate_halves_independent_of_size():
    grid = sine_embedding_2d(3, 4, 32).view(3, 4, 32)
    assert torch.unique(grid.view(12, 32), dim=0).shape[0] == 12  # every cell its own code
    assert torch.equal(grid[:, :1, :16].expand(3, 4, 16), grid[..., :16])  # first half: the row alone
    assert torch.equal(grid[:1, :, 16:].expand(3, 4, 16), grid[..., 16:])  # second half: the column alone
    # Coordinates are fractions of the map: row 1 of 3 sits where row 2 of 6 does, whatever the resolution.
    finer = sine_embedding_2d(6, 4, 32).view(6, 4, 32)
    torch.testing.assert_close(finer[1, :, :16], grid[0, :, :16])
    torch.testing.assert_close(finer[5, :, :16], grid[2, :, :16])


@pytest.mark.parametrize("cpu_fast_paths", [False, True])
def test_style_encoder_ignores_padded_actions(cpu_fast_paths):
    """Padded steps (past the episode's end) are masked out of the style encoder's attention: whatever they hold,
    mu and logvar stay the same; a valid step does change them."""
    model = make_policy(cpu_fast_paths=cpu_fast_paths).model.eval()
    batch = make_batch()  # sample 0: its last 2 steps are padding
    state, actions, is_pad = batch["state"].flatten(1), batch["actions"], batch["is_pad"]
    mu, logvar = model.encode_style(state, actions, is_pad)
    padded_changed = actions.clone()
    padded_changed[0, -2:] = 100 * torch.randn(2, ACTION_DIM)
    mu_padded, logvar_padded = model.encode_style(state, padded_changed, is_pad)
    torch.testing.assert_close(mu_padded, mu)
    torch.testing.assert_close(logvar_padded, logvar)
    valid_changed = actions.clone()
    valid_changed[0, 0] += 1.0
    mu_valid, _ = model.encode_style(state, valid_changed, is_pad)
    assert (mu_valid[0] - mu[0]).abs().max() > 1e-3
    torch.testing.assert_close(mu_valid[1:], mu[1:])  # other samples untouched


def test_stacked_frames_are_told_apart_by_their_learned_embedding():
    """frame_stack 2 with one camera: the two frames enter as two image inputs. Reversing their order must change
    the prediction (motion is visible); with the per-frame embedding zeroed it would not, since attention is blind
    to the order of its keys and both frames get the same 2D sine code."""
    policy = make_policy(num_cameras=2).eval()  # 1 camera x 2 frames, as build_policy sizes it
    state = torch.randn(3, STATE_DIM)
    frames = torch.randint(0, 256, (3, 2, 3, 64, 64)).float()  # (B, F*N, C, H, W)
    forward, _ = policy.model(state, frames)
    reversed_order, _ = policy.model(state, frames.flip(1))
    assert (forward - reversed_order).abs().max() > 1e-3
    with torch.no_grad():
        policy.model.camera_embed.weight.zero_()
    forward, _ = policy.model(state, frames)
    reversed_order, _ = policy.model(state, frames.flip(1))
    torch.testing.assert_close(forward, reversed_order)


def test_a_debugger_attached_before_the_policy_is_built_stops_in_act_style_encoder():
    """With the shipped setting (cpu_fast_paths=True) and a debugger attached (bdb is pdb's engine), a breakpoint
    on the feed-forward line of act.EncoderLayer.forward is hit in the style encoder's last layer; without a
    debugger the same policy runs models/fast_cpu.py."""
    lines, first = inspect.getsourcelines(EncoderLayer.forward)
    breakpoint_line = first + next(i for i, line in enumerate(lines) if "self.feedforward(x)" in line)

    class Debugger(bdb.Bdb):
        def __init__(self):
            super().__init__()
            self.stopped_in = []  # the EncoderLayer of every stop

        def user_line(self, frame):
            if frame.f_code is EncoderLayer.forward.__code__:
                self.stopped_in.append(frame.f_locals["self"])
            self.set_continue()

    def build_and_train_one_step():
        policy = make_policy(cpu_fast_paths=True)
        policy(make_batch())["loss"].backward()
        return policy

    debugger = Debugger()
    debugger.set_break(inspect.getsourcefile(EncoderLayer), breakpoint_line)
    try:
        policy = debugger.runcall(build_and_train_one_step)
    finally:
        sys.settrace(None)
    assert not policy.cpu_fast_paths and type(policy.model.style_encoder) is TransformerEncoder
    assert any(layer is policy.model.style_encoder.layers[-1] for layer in debugger.stopped_in)
    assert make_policy(cpu_fast_paths=True).cpu_fast_paths  # no debugger: the fast paths


def test_cls_only_encoder_equals_the_first_token_of_the_plain_one():
    torch.manual_seed(0)
    plain = TransformerEncoder(2, d_model=32, nhead=4, dim_feedforward=64, dropout=0.1).eval()
    x, pos = torch.randn(3, 8, 32), torch.randn(1, 8, 32)
    is_pad = torch.zeros(3, 8, dtype=torch.bool)
    is_pad[0, -3:] = True
    torch.testing.assert_close(ClsOnlyEncoder(plain.layers)(x, pos, is_pad), plain(x, pos, is_pad)[:, :1])


@pytest.mark.parametrize("num_cameras", [0, 1])
@pytest.mark.parametrize("mode", ["eval", "train without dropout"])
def test_fast_paths_give_the_plain_model_outputs_and_gradients(num_cameras, mode):
    """The whole policy with and without models/fast_cpu.py: same parameters, checkpoint keys, losses and gradients.
    The [CLS]-only layer draws dropout masks of another shape, so training mode runs with dropout 0; the
    reparameterisation noise comes from the same seed."""
    dropout = 0.1 if mode == "eval" else 0.0
    policies = [make_policy(num_cameras, cpu_fast_paths=fast, dropout=dropout) for fast in (False, True)]
    assert isinstance(policies[1].model.style_encoder, ClsOnlyEncoder)
    assert policies[0].state_dict().keys() == policies[1].state_dict().keys()
    batch = make_batch(num_cameras=num_cameras)
    results = []
    for policy in policies:
        policy.train(mode != "eval")
        torch.manual_seed(1)
        losses = policy(batch)
        losses["loss"].backward()
        results.append((losses, {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}))
    (plain_losses, plain_grads), (fast_losses, fast_grads) = results
    for key in plain_losses:
        torch.testing.assert_close(fast_losses[key], plain_losses[key])
    assert fast_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], msg=name)


def test_fast_dropout_keeps_one_minus_p_and_preserves_the_mean():
    torch.manual_seed(0)
    x = torch.ones(2_000_000)
    out = MaskDropout(0.1).train()(x)
    assert abs((out == 0).float().mean().item() - 0.1) < 1e-3  # 4 sigma is 8.5e-4
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.9))
    assert abs(out.mean().item() - 1.0) < 3e-3
    assert torch.equal(MaskDropout(0.1).eval()(x), x)


def test_fast_feedforward_equals_relu_then_dropout_with_the_same_random_draws():
    torch.manual_seed(0)
    plain = FeedForward(16, 64, dropout=0.2).train()
    fast = ReluDropoutFeedForward(*plain)
    x = torch.randn(5, 7, 16, requires_grad=True)
    torch.manual_seed(1)
    out = fast(x)
    out.square().sum().backward()
    fast_grads = [x.grad.clone()] + [p.grad.clone() for p in fast.parameters()]
    x.grad = None
    fast.zero_grad()

    # The plain layers with dropout by the same keep mask (same generator state).
    torch.manual_seed(1)
    linear1, _, _, linear2 = plain
    hidden = linear1(x)
    keep = dropout_keep_mask(hidden, 0.2)
    reference = linear2(torch.relu(hidden) * keep / 0.8)
    reference.square().sum().backward()
    torch.testing.assert_close(out, reference)
    for fast_grad, ref in zip(fast_grads, [x.grad] + [p.grad for p in plain.parameters()]):
        torch.testing.assert_close(fast_grad, ref)
    assert 0.1 < (keep == 0).float().mean().item() < 0.3
