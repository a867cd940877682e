"""The log(Sigma) study's own arithmetic (benchmarks/bench_covariance_logsigma.py): its figures
are only as good as its round trip and its closed-loop predictor."""
import numpy as np

from benchmarks.bench_covariance_logsigma import (causal_neighbours, entropy_bytes, log_sigma_features,
                                                  predictive_code, quaternions, rotation_matrices,
                                                  shapes_from_features)


def _random_shapes(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(-4.0, 1.5, (n, 3)), rng.normal(size=(n, 4))


def test_features_round_trip_to_the_same_covariances():
    """Shapes -> log(Sigma) -> shapes gives the same covariance matrices, whatever axis order or
    quaternion sign eigh picks (each of Shepperd's four branches is reached)."""
    log_scales, quats = _random_shapes(2000)
    back_scales, back_quats = shapes_from_features(log_sigma_features(log_scales, quats))

    def covariances(ls, q):
        rot = rotation_matrices(q)
        return np.einsum("nij,nj,nkj->nik", rot, np.exp(2.0 * ls), rot)

    np.testing.assert_allclose(covariances(back_scales, back_quats), covariances(log_scales, quats),
                               rtol=1e-9, atol=1e-15)
    feat = log_sigma_features(log_scales, quats)
    np.testing.assert_allclose((feat ** 2).sum(1), (4.0 * log_scales ** 2).sum(1))  # Frobenius isometry


def test_quaternions_invert_rotation_matrices_up_to_sign():
    _, quats = _random_shapes(500, seed=1)
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    back = quaternions(rotation_matrices(quats))
    same = np.abs((back * quats).sum(1))
    np.testing.assert_allclose(same, 1.0, atol=1e-12)


def test_closed_loop_error_is_at_most_half_a_step_and_the_entropy_counts_symbols():
    rng = np.random.default_rng(2)
    means = rng.uniform(size=(300, 3))
    feat = rng.normal(size=(300, 6))
    order = np.arange(300)
    rank = order.copy()
    neighbours = causal_neighbours(means, rank, 4)
    assert all(np.all(rank[nb] < i) for i, nb in enumerate(neighbours))
    decoded, symbols = predictive_code(feat, order, neighbours, 0.1)
    assert np.max(np.abs(decoded - feat)) <= 0.05 + 1e-12
    # the decoder's view: the same symbols and neighbours give the same values
    again = np.zeros_like(feat)
    for n in order:
        nb = neighbours[n]
        again[n] = (again[nb].mean(0) if len(nb) else 0.0) + symbols[n] * 0.1
    np.testing.assert_array_equal(again, decoded)
    two = np.array([[0], [1], [0], [1]])
    assert entropy_bytes(two) == 0.5  # 4 symbols of 1 bit
