"""Covariance section (VQ codeword + scalar residual): exact round trips, the error bound the
steps promise, plain VQ at step 0, named errors on bad input and corrupt streams, and the
finetuning that keeps indices and residuals fixed."""
import numpy as np
import pytest

from ralhe_me.geometry.covariance_code import (CovarianceCode, ResidualSteps, decode_shapes, decode_shapes_code,
                                               encode_shapes, quantize_shapes)
from ralhe_me.entropy.categorical import encode_categorical, read_varint, write_varint
from ralhe_me.geometry.covariance_vq import (CovarianceStreamError, CovarianceVQError, canonical_quats,
                                             fit_codebook)


def shapes(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    s = (rng.normal(size=(n, 3)) * 0.8 - 4).astype(np.float32)
    q = rng.normal(size=(n, 4)).astype(np.float32)
    return s, q


def rotation_error(qs, q):  # radians between the rotations of quaternions [M, 4] (any norm, any sign)
    a = qs / np.linalg.norm(qs, axis=1, keepdims=True).astype(np.float64)
    b = q / np.linalg.norm(q, axis=1, keepdims=True).astype(np.float64)
    return 2 * np.arccos(np.clip(np.abs((a * b).sum(axis=1)), 0, 1))


def test_round_trip_is_exact_and_error_is_within_half_a_step():
    s, q = shapes()
    book = fit_codebook(s, q, 64)
    steps = ResidualSteps(0.1, 0.02)
    code = quantize_shapes(s, q, book, steps)
    data = encode_shapes(code)
    back = decode_shapes_code(data)  # the stream stores used codewords by decreasing use
    assert np.array_equal(back.codebook.log_scales[back.indices], code.codebook.log_scales[code.indices])
    assert np.array_equal(back.residual_log_scales, code.residual_log_scales)
    assert np.array_equal(back.residual_quats, code.residual_quats)
    assert back.steps == code.steps
    ls, qs = decode_shapes(data)
    ls0, qs0 = code.shapes()
    assert np.array_equal(ls, ls0) and np.array_equal(qs, qs0) and ls.dtype == np.float32
    assert np.abs(ls - s).max() <= 0.05 + 1e-5
    assert code.rodrigues and data[0] == 2
    # each Rodrigues component within half a step: the rotation within 2 asin(sqrt(3) step / 2)
    assert rotation_error(qs, q).max() <= 2 * np.arcsin(np.sqrt(3) * 0.01) + 1e-5
    # the residual pays for itself: finer steps, more bytes; plain VQ is smallest
    plain = encode_shapes(quantize_shapes(s, q, book))
    finer = encode_shapes(quantize_shapes(s, q, book, ResidualSteps(0.05, 0.01)))
    assert len(plain) < len(data) < len(finer)


def test_step_zero_is_plain_vq():
    s, q = shapes(500)
    book = fit_codebook(s, q, 32)
    code = quantize_shapes(s, q, book)
    ls, qs = decode_shapes(encode_shapes(code))
    idx = book.assign(s, q)
    assert np.array_equal(ls, book.log_scales[idx]) and np.array_equal(qs, book.quats[idx])
    # only the log-scales refined
    code = quantize_shapes(s, q, book, ResidualSteps(0.1, 0.0))
    ls, qs = decode_shapes(encode_shapes(code))
    assert np.array_equal(qs, book.quats[idx]) and np.abs(ls - s).max() <= 0.05 + 1e-5


def test_given_indices_are_kept():
    s, q = shapes(400)
    book = fit_codebook(s, q, 16)
    idx = np.arange(400) % 16
    code = quantize_shapes(s, q, book, ResidualSteps(0.2, 0.04), indices=idx)
    back = decode_shapes_code(encode_shapes(code))
    assert np.array_equal(back.codebook.quats[back.indices], book.quats[idx])
    with pytest.raises(CovarianceVQError, match="indices"):
        quantize_shapes(s, q, book, indices=np.full(400, 16))
    with pytest.raises(CovarianceVQError, match="shape"):
        quantize_shapes(s, q, book, indices=idx[:5])


def test_bad_steps_and_empty_input():
    with pytest.raises(CovarianceVQError, match="quaternion step"):
        ResidualSteps(0.1, 0.9)
    with pytest.raises(CovarianceVQError, match=">= 0"):
        ResidualSteps(-0.1, 0.0)
    s, q = shapes(200)
    book = fit_codebook(s, q, 8)
    with pytest.raises(CovarianceVQError, match="too small"):
        encode_shapes(quantize_shapes(s, q, book, ResidualSteps(1e-6, 0.0)))
    empty = quantize_shapes(np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32), book, ResidualSteps(0.1, 0.02))
    ls, qs = decode_shapes(encode_shapes(empty))
    assert ls.shape == (0, 3) and qs.shape == (0, 4)


def test_corrupt_sections_raise_the_named_error():
    s, q = shapes(800)
    data = encode_shapes(quantize_shapes(s, q, fit_codebook(s, q, 32), ResidualSteps(0.1, 0.02)))
    good = decode_shapes(data)
    rng = np.random.default_rng(0)
    for cut in [0, 1, 5, 9, len(data) // 2, len(data) - 1]:
        with pytest.raises(CovarianceStreamError):
            decode_shapes(data[:cut])
    with pytest.raises(CovarianceStreamError, match="version"):
        decode_shapes(b"\x07" + data[1:])
    for _ in range(150):  # bit flips: a named error, or a decode of the right size
        bad = bytearray(data)
        i = int(rng.integers(len(bad)))
        bad[i] ^= 1 << int(rng.integers(8))
        try:
            ls, qs = decode_shapes(bytes(bad))
        except CovarianceStreamError:
            continue
        assert ls.shape == good[0].shape and qs.shape == good[1].shape


def test_finetune_keeps_indices_and_residuals_and_returns_the_coded_shapes():
    from test_finetune import SMALL, tiny_scene

    from ralhe_me.train.finetune import FinetuneConfig, FinetuneError, finetune

    teacher = tiny_scene(n=200)
    book = fit_codebook(teacher.log_scales, teacher.quats, 8)
    code = quantize_shapes(teacher.log_scales, teacher.quats, book, ResidualSteps(0.4, 0.08))
    out, rep = finetune(teacher, teacher=teacher, iters=40, config=FinetuneConfig(**SMALL), covariance=code,
                        progress=False)
    tuned = rep.covariance
    assert isinstance(tuned, CovarianceCode)
    assert np.array_equal(tuned.indices, code.indices)
    assert np.array_equal(tuned.residual_quats, code.residual_quats)
    assert not np.array_equal(tuned.codebook.log_scales, book.log_scales)  # the codewords learned
    ls, qs = decode_shapes(encode_shapes(tuned))  # what a decoder gets is what was trained and scored
    assert np.array_equal(out.log_scales, ls) and np.array_equal(out.quats, qs)
    assert rep.psnr_after > rep.psnr_before
    with pytest.raises(FinetuneError, match="CovarianceCode"):
        finetune(teacher, teacher=teacher, iters=1, config=FinetuneConfig(**SMALL), covariance=book, progress=False)


def test_per_point_scaled_steps():
    s, q = shapes(1000)
    book = fit_codebook(s, q, 16)
    scale = np.where(np.arange(1000) < 500, 0.25, 4.0).astype(np.float32)
    code = quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02), point_scale=scale)
    data = encode_shapes(code)
    ls, qs = decode_shapes(data, scale)
    assert np.array_equal(ls, code.shapes()[0]) and np.array_equal(qs, code.shapes()[1])
    err = np.abs(ls - s).max(axis=1)
    assert err[:500].max() <= 0.05 * 0.25 + 1e-5 and err[500:].max() <= 0.05 * 4 + 1e-5
    assert err[500:].max() > 0.05  # the coarse half really is coarser than the base step
    with pytest.raises(CovarianceStreamError, match="gain map"):
        decode_shapes(data)
    # an unscaled section ignores the gains of a file's gain map
    plain = encode_shapes(quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02)))
    assert np.array_equal(decode_shapes(plain, scale)[0], decode_shapes(plain)[0])
    with pytest.raises(CovarianceVQError, match="point_scale"):
        quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02), point_scale=-scale)


def test_own_step_exponents_are_stored_and_scale_each_point():
    s, q = shapes(1000)
    book = fit_codebook(s, q, 16)
    e = np.where(np.arange(1000) < 500, -4, 3)  # steps x 1/4 and x 2^1.5
    code = quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02), step_exponents=e)
    data = encode_shapes(code)
    assert data[1] == 2
    back = decode_shapes_code(data, point_scale=np.full(1000, 8.0))  # a file's gain map does not apply
    assert np.array_equal(back.step_exponents, e)
    ls, qs = back.shapes()
    assert np.array_equal(ls, code.shapes()[0]) and np.array_equal(qs, code.shapes()[1])
    err = np.abs(ls - s).max(axis=1)
    assert err[:500].max() <= 0.05 / 4 + 1e-5 and err[500:].max() <= 0.05 * 2 ** 1.5 + 1e-5
    assert err[500:].max() > 0.05  # the coarse half really is coarser than the base step
    # the exponents cost bytes: a section with none is shorter than one whose exponents are all 0
    uniform = encode_shapes(quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02)))
    zeros = encode_shapes(quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02), step_exponents=np.zeros(1000, int)))
    assert len(uniform) < len(zeros) and np.array_equal(decode_shapes(uniform)[0], decode_shapes(zeros)[0])
    for bad, match in [(np.full(1000, 9), "lie in"), (np.zeros(999, int), r"\[1000\]"), (np.zeros(1000), "integers")]:
        with pytest.raises(CovarianceVQError, match=match):
            quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02), step_exponents=bad)
    with pytest.raises(CovarianceVQError, match="not both"):
        quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02), point_scale=np.ones(1000), step_exponents=e)
    # a section whose exponents name another count of shapes, or are cut short
    def exponent_stream(section):  # (start, end) of the exponents' varint length + stream
        n, pos = read_varint(section, 10)
        start = pos + n
        size, pos = read_varint(section, start)
        return start, pos + size

    a, b = exponent_stream(data)
    ex999 = encode_categorical(e[:999] + 8, 17)
    spliced = data[:a] + write_varint(len(ex999)) + ex999 + data[b:]
    with pytest.raises(CovarianceStreamError, match="step exponents: 999 for 1000 shapes"):
        decode_shapes(spliced)
    for cut in [a + 1, b - 1]:
        with pytest.raises(CovarianceStreamError, match="step exponents"):
            decode_shapes(data[:cut])
    with pytest.raises(CovarianceStreamError, match="flags 3"):
        decode_shapes(data[:1] + b"\x03" + data[2:])


def test_step_rule_picks_the_coarsest_step_that_keeps_the_renders():
    from test_finetune import tiny_scene

    from ralhe_me.encode.encoder import COVARIANCE_STEPS, _coded_psnr, choose_covariance_step
    from ralhe_me.eval.evaluation import orbit_views

    model = tiny_scene(n=400, seed=3)
    kw = dict(views=3, resolution=64, codebook_size=16)
    reference = orbit_views(model, 3, (64, 64))
    book = fit_codebook(model.log_scales, model.quats, 16)
    idx = book.assign(model.log_scales, model.quats)

    def psnr(step):
        code = quantize_shapes(model.log_scales, model.quats, book, ResidualSteps.from_ratio(step), idx)
        return _coded_psnr(model, code.shapes(), reference)

    for target in (30.0, 40.0):
        step = choose_covariance_step(model, target, **kw)
        i = COVARIANCE_STEPS.index(step)
        assert psnr(step) >= target or step == COVARIANCE_STEPS[-1]
        assert i == 0 or psnr(COVARIANCE_STEPS[i - 1]) < target  # the coarser one fails
    coarse, fine = choose_covariance_step(model, 30.0, **kw), choose_covariance_step(model, 40.0, **kw)
    assert coarse > fine  # a stricter target, a finer step


def test_rodrigues_residual_beats_the_cartesian_one_and_old_sections_still_decode():
    s, q = shapes(3000, seed=2)
    book = fit_codebook(s, q, 64)
    steps = ResidualSteps(0.14, 0.028)
    new = quantize_shapes(s, q, book, steps)
    old = quantize_shapes(s, q, book, steps, rodrigues=False)  # version 1, as older files hold
    assert np.array_equal(new.indices, old.indices)  # no rotation is far from its codeword here
    data_new, data_old = encode_shapes(new), encode_shapes(old)
    assert (data_new[0], data_old[0]) == (2, 1) and old.residual_quats.shape == (3000, 4)
    assert len(data_new) < 0.97 * len(data_old)  # a rotation's 3 numbers instead of a quaternion's 4
    qs_new, qs_old = decode_shapes(data_new)[1], decode_shapes(data_old)[1]
    assert np.array_equal(qs_old, old.shapes()[1])  # version 1 reads as it always did
    assert rotation_error(qs_new, q).mean() < rotation_error(qs_old, q).mean()


def test_compose_rotation_is_the_quaternion_product():
    from ralhe_me.geometry.covariance_code import compose_rotation

    rng = np.random.default_rng(5)
    c = rng.normal(size=(500, 4)).astype(np.float32)
    t = (rng.normal(size=(500, 3)) * 0.3).astype(np.float32)
    w, x, y, z = c.astype(np.float64).T
    one = np.ones(500)
    a, b, d = t.astype(np.float64).T
    reference = np.stack([w * one - x * a - y * b - z * d, w * a + x * one + y * d - z * b,
                          w * b - x * d + y * one + z * a, w * d + x * b - y * a + z * one], axis=1)  # Hamilton c (1, t)
    got = compose_rotation(c, t)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
    import torch

    assert np.array_equal(compose_rotation(torch.from_numpy(c), torch.from_numpy(t)).numpy(), got)


def test_far_rotations_take_the_codeword_nearest_in_rotation():
    from ralhe_me.geometry.covariance_vq import CovarianceCodebook

    book = CovarianceCodebook(np.array([[-4.0, -4.0, -4.0], [-1.0, -1.0, -1.0]]),
                              np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]))
    s = np.full((50, 3), -4.0, np.float32)
    q = np.tile(np.array([[0.05, 1.0, 0.0, 0.0]], np.float32), (50, 1))  # near codeword 1's rotation
    assert np.all(book.assign(s, q) == 0)  # the scales pick codeword 0, 174 degrees away
    code = quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02))
    assert code.rodrigues and np.all(code.indices == 1)
    ls, qs = decode_shapes(encode_shapes(code))
    assert np.abs(ls - s).max() <= 0.05 + 1e-5 and rotation_error(qs, q).max() < 0.03
    # given indices are kept: then the section falls back to version 1
    kept = quantize_shapes(s, q, book, ResidualSteps(0.1, 0.02), indices=np.zeros(50, np.int64))
    assert not kept.rodrigues and np.all(kept.indices == 0) and encode_shapes(kept)[0] == 1


def test_a_codebook_too_small_for_every_rotation_falls_back_to_version_1():
    s, q = shapes(400, seed=4)
    book = fit_codebook(s, q, 1)
    code = quantize_shapes(s, q, book, ResidualSteps(0.2, 0.04))
    assert not code.rodrigues  # random rotations: some are over 151 degrees from the one codeword
    data = encode_shapes(code)
    qs = decode_shapes(data)[1]
    qc = canonical_quats(q)
    err = np.minimum(np.abs(qs - qc).max(axis=1), np.abs(qs + qc).max(axis=1))  # version 1's bound
    assert data[0] == 1 and err.max() <= 0.02 + 1e-5
