"""Pruning the 4-layer decoder branches that do not pay for their bits (encode/branch_pruning.py)."""
import dataclasses

import numpy as np
import pytest
import torch

from conftest import small_codec_config
from ralhe_me.decode.bitstream import unpack
from ralhe_me.decode.decoder import decode_bytes
from ralhe_me.decode.reconstruction import SECTION_DECODERS, quantize_decoders
from ralhe_me.decode.synthesis import AttributeSynthesis
from ralhe_me.decode.weights import MASKED, _codes, _zigzag, decode_int_tensors, encode_int_tensors
from ralhe_me.default_scene import make_default_scene
from ralhe_me.config import ArchitectureConfig
from ralhe_me.encode import encoder as encoder_module
from ralhe_me.encode.branch_pruning import (BranchPruningError, branch_slices, choose_pruned, combine,
                                            pruned_ints)


def test_choice_prunes_what_pays_alone_unless_together_costs_more():
    def additive(gains):  # cost = 10 - sum of the gains of the pruned attributes
        return lambda pruned: 10.0 - sum(gains[a] for a in pruned)

    assert choose_pruned(additive([1.0, -2.0, 0.5, 0.0]), 4) == frozenset({0, 2})
    assert choose_pruned(additive([-1.0, -2.0, 0.0]), 3) == frozenset()

    def clashing(pruned):  # each pays alone, together they cost more than the best alone
        return {frozenset(): 10.0, frozenset({0}): 9.0, frozenset({1}): 8.5}.get(pruned, 11.0)

    assert choose_pruned(clashing, 2) == frozenset({1})


def test_slices_map_every_branch_tensor_to_its_attributes():
    synthesis = AttributeSynthesis(4, ArchitectureConfig())
    names = [n for n, _ in synthesis.decoder_parameters()]
    slices = branch_slices(names, 4)
    assert len(slices) == 16 and all(not names[i].endswith(("skip", "skip_bias")) for i, _ in slices)
    assert {first for _, first in slices} == {0, 4}
    ints = [np.arange(1, p.numel() + 1).reshape(p.shape) for _, p in synthesis.decoder_parameters()]
    out = pruned_ints(ints, slices, frozenset({2, 4}))
    first_attribute = dict(slices)
    for i in range(len(names)):
        first = first_attribute.get(i)
        if first is None:  # skip paths are never pruned
            assert np.array_equal(out[i], ints[i])
        elif first == 0:  # the SH group: slice 2 only
            assert not out[i][2].any() and np.array_equal(np.delete(out[i], 2, 0), np.delete(ints[i], 2, 0))
        else:  # opacity (attribute 4)
            assert not out[i].any()
    assert all(ints[i].all() for i in range(len(ints)))  # the input is left alone
    with pytest.raises(BranchPruningError, match="no attribute group"):
        branch_slices(["colour.linear0_weight"], 4)


def test_combine_takes_each_pruned_attribute_from_the_pruned_decode():
    rng = np.random.default_rng(0)
    kept = (rng.normal(size=(50, 3, 3)), rng.normal(size=50))
    pruned = (rng.normal(size=(50, 3, 3)), rng.normal(size=50))
    sh, op = combine(kept, pruned, frozenset({1, 3}))
    assert np.array_equal(sh[:, 1], pruned[0][:, 1]) and np.array_equal(sh[:, [0, 2]], kept[0][:, [0, 2]])
    assert op is pruned[1]
    sh, op = combine(kept, pruned, frozenset())
    assert sh is kept[0] and op is kept[1]


def test_weights_with_pruned_slices_are_written_masked_and_read_back():
    rng = np.random.default_rng(1)
    stacked = rng.integers(-9, 10, (17, 12, 4))
    stacked[[0, 5, 16]] = 0
    tensors = [stacked, np.zeros((17, 27, 2, 3), np.int64), rng.integers(-9, 10, (17, 3, 3)), np.array(0)]
    data = encode_int_tensors(tensors)
    assert data[0] & MASKED and data[len(encode_int_tensors(tensors[:1]))] & MASKED  # both zero-sliced ones
    k, codes = _codes(_zigzag(stacked.ravel()))
    assert len(encode_int_tensors([stacked])) < 1 + len(codes)  # shorter than the plain form
    out = decode_int_tensors(data, [t.shape for t in tensors])
    assert all(np.array_equal(o, t) for o, t in zip(out, tensors))
    # a tensor with no zero slice, or one where the mask would not be shorter, stays plain
    assert not encode_int_tensors([tensors[2]])[0] & MASKED
    assert not encode_int_tensors([np.array(0)])[0] & MASKED


@pytest.fixture(scope="module")
def trained():
    config = small_codec_config()
    model = make_default_scene(1500, seed=4)
    vox = encoder_module.prepare(model, config)
    return encoder_module.encode_model(None, config, voxelized=vox), config


def test_fast_encodes_prune_branches_and_decode_to_the_encoders_reconstruction(trained):
    result, _ = trained
    record = [r for r in result.training.history if r.get("step") == "branch_pruning"]
    assert len(record) == 1 and record[0]["pruned"]  # 15 steps at the fast rates teach the branches nothing
    container = unpack(result.data)
    synthesis = result.training.synthesis
    ints = decode_int_tensors(container.section(SECTION_DECODERS),
                              [tuple(p.shape) for _, p in synthesis.decoder_parameters()])
    names = [n for n, _ in synthesis.decoder_parameters()]
    for index, first in branch_slices(names, synthesis.num_sh):
        for a in record[0]["pruned"]:
            if 0 <= a - first < ints[index].shape[0]:
                assert not ints[index][a - first].any()
    for engine in ("native", "python"):
        decoded = decode_bytes(result.data, engine=engine).model
        assert np.array_equal(decoded.sh, result.reconstruction.sh)
        assert np.array_equal(decoded.opacity_logits, result.reconstruction.opacity_logits)


def test_the_branches_the_target_needs_are_kept_and_the_rest_pruned(trained):
    """Make the SH DC and opacity branches carry what the target holds (the target is their
    decoded output), and every other attribute's target its skip path alone: pruning must keep
    exactly those two branches."""
    result, config = trained
    training = result.training
    synthesis = training.synthesis
    with torch.no_grad():  # branches with a large output
        for dec in (synthesis.sh_decoder, synthesis.opacity_decoder):
            dec.conv1_kernel.uniform_(-2.0, 2.0)
            dec.conv1_bias.uniform_(-2.0, 2.0)
    shift = 10
    ints = quantize_decoders(synthesis, shift)
    names = [n for n, _ in synthesis.decoder_parameters()]
    slices = branch_slices(names, synthesis.num_sh)
    target_model = result.voxelized.model
    from ralhe_me.attributes import extract_signals

    signals = extract_signals(target_model, config.training.opacity_weight)
    decoded = encoder_module.branch_decodes(training, ints, slices, shift, signals)
    needed = frozenset({0, synthesis.num_sh})
    others = frozenset(range(synthesis.num_sh + 1)) - needed
    sh, op = combine(decoded[0], decoded[1], others)
    target = dataclasses.replace(target_model, sh=sh, opacity_logits=op)
    n = len(target_model)
    # a small lambda: the choice follows the distortion (the bits of a 1500-point scene's branch
    # weigh as much as a large error at the test's rate)
    out = encoder_module._prune_branches(training, ints, shift, target, signals, config.lmbda / 100, n,
                                         config.training.opacity_weight, None, None, None, 0)
    assert training.history[-1] == {"step": "branch_pruning", "pruned": sorted(others)}
    assert np.array_equal(out[slices[0][0]], pruned_ints(ints, slices, others)[slices[0][0]])
    assert len(encode_int_tensors(out)) < len(encode_int_tensors(ints))
