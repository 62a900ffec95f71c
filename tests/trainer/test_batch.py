import numpy as np
import pytest

from capojax.rollout.base import Rollout
from capojax.trainer.batch import assemble, round_up


def _rollout(lengths, n, T=5):
    N = len(lengths)
    tokens = np.zeros((N, T), np.int32)
    logprobs = np.zeros((N, T), np.float32)
    for r, length in enumerate(lengths):
        tokens[r, :length] = 100 + 10 * r + np.arange(length)
        logprobs[r, :length] = -0.1 * (r + 1)
    mask = np.arange(T)[None] < np.asarray(lengths)[:, None]
    return Rollout(tokens, logprobs, mask, np.asarray(lengths, np.int32), np.ones(N, bool),
                   np.repeat(np.arange(N // n), n).astype(np.int32), pad_id=0)


def test_assemble_aligns_completions_at_a_static_column():
    prompts = [[1, 2, 3], [4]]
    rollout = _rollout([2, 5, 1, 3], n=2)
    seq = assemble(prompts, rollout, pad_id=0, bucket=4)
    P = seq.prompt_len
    assert P == 4 and seq.response_mask.shape == (4, 8)
    # row 1 answers prompt 0: left-padded prompt, completion at column P
    np.testing.assert_array_equal(seq.input_ids[1, :P], [0, 1, 2, 3])
    np.testing.assert_array_equal(seq.input_ids[1, P : P + 5], rollout.tokens[1, :5])
    # row 2 answers prompt 1 (one token) with one completion token
    np.testing.assert_array_equal(seq.input_ids[2, : P + 2], [0, 0, 0, 4, 120, 0])
    np.testing.assert_array_equal(seq.attention_mask[2, : P + 2], [0, 0, 0, 1, 1, 0])
    assert seq.positions[2, 3] == 0 and seq.positions[2, 4] == 1
    np.testing.assert_array_equal(seq.response_mask.sum(1), [2, 5, 1, 3])
    np.testing.assert_allclose(seq.sampler_logp[3, :3], -0.4)
    assert (seq.sampler_logp[~seq.response_mask] == 0).all()


def test_assemble_pads_rows_to_a_multiple():
    seq = assemble([[1, 2]], _rollout([1, 2], n=2), pad_id=0, bucket=2, min_rows=8)
    assert seq.num_rows == 8
    assert not seq.response_mask[2:].any() and not seq.attention_mask[2:].any()


def test_empty_rollout_is_an_error():
    empty = Rollout(*(np.zeros((0, 4)) for _ in range(3)), np.zeros(0, np.int32), np.zeros(0, bool),
                    np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="no rows"):
        assemble([[1]], empty, pad_id=0)


@pytest.mark.parametrize("n,m,expected", [(1, 32, 32), (32, 32, 32), (33, 32, 64), (0, 8, 8)])
def test_round_up(n, m, expected):
    assert round_up(n, m) == expected


def test_assemble_pads_to_fixed_sizes_and_refuses_too_small_ones():
    prompts = [[1, 2, 3], [4]]
    rollout = _rollout([2, 5, 1, 3], n=2)
    own = assemble(prompts, rollout, pad_id=0, bucket=4)
    fixed = assemble(prompts, rollout, pad_id=0, bucket=4, prompt_len=6, length=11)
    assert (fixed.prompt_len, fixed.response_mask.shape[1]) == (6, 11)
    # the same rows, two more pad columns on the left and three on the right
    np.testing.assert_array_equal(fixed.input_ids[:, 2:-3], own.input_ids)
    assert not fixed.attention_mask[:, :2].any() and not fixed.attention_mask[:, -3:].any()
    np.testing.assert_array_equal(fixed.response_mask[:, :8], own.response_mask)
    np.testing.assert_array_equal(fixed.positions[:, 2:-3][own.attention_mask], own.positions[own.attention_mask])
    assert fixed.attention_mask.sum() == own.attention_mask.sum()
    with pytest.raises(ValueError, match="prompt_len=2 is shorter than the longest row \\(3 tokens\\)"):
        assemble(prompts, rollout, pad_id=0, prompt_len=2)
    with pytest.raises(ValueError, match="length=4 is shorter than the longest row \\(5 tokens\\)"):
        assemble(prompts, rollout, pad_id=0, length=4)
