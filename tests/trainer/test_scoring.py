"""grade_rollout / score_rollout: decode, grade (verl's boxed-only training reward by default) and read the DCPO
confidence."""

import numpy as np
import pytest

from capojax.rollout.base import Rollout
from capojax.trainer.scoring import grade_rollout, score_rollout


@pytest.fixture(scope="module")
def tok(qwen_tokenizer_dir):
    from capojax.tokenizer import load_tokenizer

    return load_tokenizer(qwen_tokenizer_dir)


def _rollout(tok, texts):
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    T = max(len(i) for i in ids)
    tokens = np.zeros((len(ids), T), np.int32)
    for r, row in enumerate(ids):
        tokens[r, : len(row)] = row
    lengths = np.array([len(i) for i in ids], np.int32)
    mask = np.arange(T)[None] < lengths[:, None]
    return Rollout(tokens, np.zeros((len(ids), T), np.float32), mask, lengths, np.ones(len(ids), bool),
                   np.zeros(len(ids), np.int32), pad_id=0)


def test_training_reward_needs_a_boxed_answer_like_verl(tok):
    """verl's math reward grades the last \\boxed{} only, and no box means 0: "no boxed answer, 25" earns nothing
    for gold 25 unless the lenient fallback is asked for."""
    texts = ["I think the result is 25", "So the answer is \\boxed{25}.", "\\boxed{24} then \\boxed{25}"]
    rollout = _rollout(tok, texts)
    strict = score_rollout(rollout, ["25"], tok, timeout=30.0, workers=0, with_confidence=False)
    assert strict.correct.tolist() == [False, True, True]
    assert strict.extracted[0] is None
    lenient = score_rollout(rollout, ["25"], tok, timeout=30.0, workers=0, with_confidence=False,
                            require_boxed=False)
    assert lenient.correct.tolist() == [True, True, True]


def test_confidence_is_parsed_only_when_asked(tok):
    rollout = _rollout(tok, ["\\boxed{25}\nCONFIDENCE: 0.85", "\\boxed{3}\nCONFIDENCE: 0.4"])
    with_conf = score_rollout(rollout, ["25"], tok, timeout=30.0, workers=0, with_confidence=True)
    np.testing.assert_allclose(with_conf.confidence, [0.85, 0.4])
    assert with_conf.confidence_mask.any(axis=1).all() and with_conf.correct.tolist() == [True, False]
    without = score_rollout(rollout, ["25"], tok, timeout=30.0, workers=0, with_confidence=False)
    assert np.isnan(without.confidence).all() and not without.confidence_mask.any()


def test_grade_rollout_grades_each_row_against_its_prompts_gold(tok):
    """Rows answer prompts by `prompt_index`; grade_rollout is score_rollout without the confidence token masks."""
    rollout = _rollout(tok, ["\\boxed{7}\nCONFIDENCE: 0.9", "\\boxed{7}", "\\boxed{8}\nCONFIDENCE: 0.6"])
    rollout.prompt_index[:] = [0, 1, 1]
    graded = grade_rollout(rollout, ["7", "8"], tok, timeout=30.0, workers=0, with_confidence=True)
    assert graded.correct.tolist() == [True, False, True] and graded.extracted == ["7", "7", "8"]
    assert graded.timed_out.tolist() == [False] * 3 and graded.timeouts == graded.crashes == 0
    np.testing.assert_array_equal(graded.confidence, np.array([0.9, np.nan, 0.6], np.float32))
    assert graded.texts[1] == "\\boxed{7}"
    scores = score_rollout(rollout, ["7", "8"], tok, timeout=30.0, workers=0, with_confidence=True)
    assert scores.correct.tolist() == graded.correct.tolist() and scores.texts == graded.texts
    np.testing.assert_array_equal(scores.confidence, graded.confidence)
