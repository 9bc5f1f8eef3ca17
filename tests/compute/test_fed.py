"""Federated learning maths: models, Opacus DP-SGD updates, FedAvg, accounting."""

from __future__ import annotations

import secrets
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from bund.compute.errors import InvalidInputError
from bund.compute.learn import fed, metrics

KEY = bytes(range(32))  # a fixed stream key: these tests compare updates, not secrecy


def _data(rows: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (rows, 4))
    return x, (x[:, 0] - x[:, 1] > 0).astype(np.float64)


@pytest.mark.parametrize("kind", fed.MODEL_KINDS)
def test_initial_weights_follow_the_public_seed_and_fit_the_model(kind: str) -> None:
    spec = fed.ModelSpec(kind, 4, hidden=3)
    w = fed.initial_weights(spec, 7)
    assert len(w) == spec.size
    assert np.array_equal(w, fed.initial_weights(spec, 7))
    assert not np.array_equal(w, fed.initial_weights(spec, 8))
    model = fed.create_model(spec)
    fed.set_weights(model, w)
    assert np.allclose(fed.get_weights(model), w)
    with pytest.raises(InvalidInputError):
        fed.set_weights(model, w[:-1])


@pytest.mark.parametrize("kind", fed.MODEL_KINDS)
def test_every_grad_sample_mode_computes_the_same_dp_sgd_update(kind: str) -> None:
    spec, (x, y) = fed.ModelSpec(kind, 4, hidden=5), _data()
    w = fed.initial_weights(spec, 1)
    updates = [
        fed.local_update(
            spec,
            w,
            x,
            y,
            fed.DpSgdConfig(6, 0.3, 1.1, 0.7, 0.05, mode),
            key=KEY,
        ).delta
        for mode in fed.GRAD_SAMPLE_MODES
    ]
    for other in updates[1:]:
        assert np.allclose(updates[0], other, atol=1e-5)


def _batch_sizes(spec: fed.ModelSpec, rows: int, config: fed.DpSgdConfig) -> list[int]:
    """The Poisson batch sizes of ``local_update`` under ``KEY``, read off the same stream."""
    import torch

    stream = fed.SecureStream(KEY)
    model = fed.create_model(spec)
    noise = fed.GaussianNoise(stream, [tuple(p.shape) for p in model.parameters()], torch.float32)
    sizes = []
    for _ in range(config.steps):
        sizes.append(int((stream.uniform(rows) < config.sample_rate).sum()))
        noise.draw(1.0)
    return sizes


@pytest.mark.parametrize("kind", fed.MODEL_KINDS)
def test_empty_poisson_batches_release_the_same_noise_in_every_mode(kind: str) -> None:
    spec, (x, y) = fed.ModelSpec(kind, 4, hidden=3), _data(6)
    w = fed.initial_weights(spec, 2)
    config = [fed.DpSgdConfig(12, 0.3, 1.0, 1.0, 0.1, mode) for mode in fed.GRAD_SAMPLE_MODES]
    sizes = _batch_sizes(spec, 6, config[0])
    assert sizes[0] == 0 and max(sizes) > 0  # the first batch is empty, a later one is not
    updates = [fed.local_update(spec, w, x, y, c, KEY) for c in config]
    assert np.isfinite(updates[0].loss)
    for other in updates[1:]:
        assert np.allclose(updates[0].delta, other.delta, atol=1e-5)
        assert other.loss == pytest.approx(updates[0].loss, abs=1e-6)


@pytest.mark.parametrize("mode", ["hooks", "closed_form"])
def test_noise_and_sampling_come_from_the_given_key(mode: str) -> None:
    spec, (x, y) = fed.ModelSpec("logistic", 4), _data()
    w = fed.initial_weights(spec, 1)
    config = fed.DpSgdConfig(3, 0.3, 1.0, 1.0, 0.1, mode)
    a = fed.local_update(spec, w, x, y, config, KEY).delta
    assert np.array_equal(a, fed.local_update(spec, w, x, y, config, KEY).delta)
    assert not np.allclose(a, fed.local_update(spec, w, x, y, config, bytes(32)).delta)


@pytest.mark.slow
def test_the_secure_stream_draws_the_distributions_it_claims() -> None:
    """KS tests over 10^6 draws each: uniform on (0, 1), and the secure-mode standard normal."""
    stream = fed.SecureStream(secrets.token_bytes(32))
    uniform = stream.uniform(1_000_000)
    assert 0 < uniform.min() and uniform.max() < 1
    assert stats.kstest(uniform, "uniform").pvalue > 1e-4
    normal = stream.secure_normal(1_000_000)
    assert stats.kstest(normal, "norm").pvalue > 1e-4
    assert abs(normal.mean()) < 0.01 and abs(normal.std() - 1) < 0.01
    with pytest.raises(ValueError, match="32 bytes"):
        fed.SecureStream(b"short")


@pytest.mark.slow
def test_one_draw_for_all_tensors_is_the_secure_mode_normal_scaled_by_std() -> None:
    """KS over 10^6 values of one vectorised draw cut into tensors, and of each tensor alone."""
    import torch

    shapes = [(700, 1000), (200_000,), (1, 99_999), (1,)]
    noise = fed.GaussianNoise(fed.SecureStream(secrets.token_bytes(32)), shapes, torch.float32)
    std = 2.5
    tensors = noise.draw(std)
    assert [tuple(t.shape) for t in tensors] == shapes
    assert all(t.dtype == torch.float32 for t in tensors)
    values = np.concatenate([t.numpy().ravel() for t in tensors]).astype(np.float64) / std
    assert len(values) == 1_000_000
    assert stats.kstest(values, "norm").pvalue > 1e-4
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    for part in np.split(values, [700_000, 900_000]):  # no tensor's share is skewed
        assert stats.kstest(part, "norm").pvalue > 1e-4
    again = np.concatenate([t.numpy().ravel() for t in noise.draw(std)])
    assert np.corrcoef(values, again)[0, 1] < 0.01  # the next step's noise is fresh


def test_the_vectorised_noise_is_the_streams_secure_normal_and_follows_the_key() -> None:
    import torch

    shapes = [(16, 7), (16,), (1, 16), (1,)]
    first = fed.GaussianNoise(fed.SecureStream(KEY), shapes, torch.float32)
    drawn = [np.concatenate([t.numpy().ravel() for t in first.draw(0.5)]) for _ in range(2)]
    stream = fed.SecureStream(KEY)
    for values in drawn:  # the same key, drawn in one piece: the same values, step after step
        expected = (stream.secure_normal(145) * 0.5).astype(np.float32)
        assert np.array_equal(values, expected)
    other = fed.GaussianNoise(fed.SecureStream(bytes(32)), shapes, torch.float32).draw(0.5)
    assert not np.allclose(np.concatenate([t.numpy().ravel() for t in other]), drawn[0])


def test_the_noise_buffer_is_filled_with_the_keystream_in_place() -> None:
    buffer = bytearray(64)
    stream, reference = fed.SecureStream(KEY), fed.SecureStream(KEY)
    stream.fill(buffer, bytes(64))
    words = np.frombuffer(bytes(buffer), dtype="<u8")
    assert np.array_equal(
        ((words >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53, reference.uniform(8)
    )
    assert np.array_equal(stream.uniform(3), reference.uniform(3))  # both streams moved on alike


@pytest.mark.parametrize("mode", ["hooks", "closed_form"])
def test_per_sample_clipping_bounds_a_noise_free_step(mode: str) -> None:
    spec, (x, y) = fed.ModelSpec("mlp", 4, hidden=8), _data()
    x = x * 50  # large inputs, large gradients: only clipping keeps the step small
    w = fed.initial_weights(spec, 2)
    clip, lr = 0.01, 1.0
    config = fed.DpSgdConfig(1, lr, 0.0, clip, 1.0, mode)  # every row in the batch, no noise
    update = fed.local_update(spec, w, x, y, config, KEY)
    assert 0 < np.linalg.norm(update.delta) <= lr * clip + 1e-6


@pytest.mark.parametrize("mode", ["hooks", "closed_form"])
def test_noise_free_loose_dp_sgd_with_full_batches_is_plain_gradient_descent(mode: str) -> None:
    import torch

    spec, (x, y) = fed.ModelSpec("logistic", 4), _data(64)
    w = fed.initial_weights(spec, 3)
    dp = fed.local_update(spec, w, x, y, fed.DpSgdConfig(1, 0.5, 0.0, 1e6, 1.0, mode), KEY)
    model = fed.create_model(spec)
    fed.set_weights(model, w)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(torch.as_tensor(x, dtype=torch.float32)).squeeze(-1),
        torch.as_tensor(y, dtype=torch.float32),
    )
    loss.backward()
    gradient = np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])
    assert np.allclose(dp.delta, -0.5 * gradient, atol=1e-6)


def test_training_improves_the_auc_and_the_log_loss_over_the_start() -> None:
    spec, (x, y) = fed.ModelSpec("logistic", 4), _data(400)
    w = fed.initial_weights(spec, 0)
    update = fed.plain_update(spec, w, x, y, 200, 0.5, 32, 1)
    before, after = fed.scores(spec, w, x), fed.scores(spec, w + update.delta, x)
    assert after.shape == (400,)
    assert metrics.auc(y, after) > max(metrics.auc(y, before), 0.9)
    loss_before = metrics.clipped_log_loss(y, before, 0.01).mean()
    assert metrics.clipped_log_loss(y, after, 0.01).mean() < loss_before


def test_fedavg_is_the_unweighted_mean_of_the_updates() -> None:
    w = np.array([1.0, 2.0])
    assert fed.fedavg(w, [np.array([1.0, 0.0]), np.array([0.0, 4.0])]).tolist() == [1.5, 4.0]
    with pytest.raises(ValueError):
        fed.fedavg(w, [])


def test_epsilon_grows_with_steps_and_is_charged_rounded_up() -> None:
    values = [fed.epsilon_spent(1.0, 0.05, steps, 1e-5) for steps in (0, 10, 100, 1000)]
    assert values[0] == 0 and values == sorted(values) and values[1] > 0
    assert fed.epsilon_spent(1.0, 0.05, 100, 1e-5, "prv") > 0
    bound = fed.epsilon_bound(values[2])
    assert isinstance(bound, Fraction)
    assert 0 <= bound - Fraction(values[2]) < fed.EPSILON_RESOLUTION
    assert (bound / fed.EPSILON_RESOLUTION).denominator == 1
    assert fed.epsilon_spent(0.0, 0.05, 10, 1e-5) == float("inf")


def test_features_are_scaled_by_public_ranges_and_unknown_ones_refused() -> None:
    x = fed.scale_features({"age": np.array([18.0, 59.0, 150.0])}, fed.HEALTH_RANGES)
    assert x[:, 0].tolist() == [-1.0, 0.0, 1.0]
    with pytest.raises(InvalidInputError, match="public value range"):
        fed.scale_features({"salary": np.array([1.0])}, fed.HEALTH_RANGES)
