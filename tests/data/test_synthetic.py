"""The synthetic arithmetic task: deterministic, correct worked solutions, knobs respected; the tiny tokenizer."""

import re

import pytest

from capojax.data import synthetic
from capojax.rewards import extract_boxed, grade


def test_deterministic_by_seed_and_index():
    a = synthetic.make_problems(50, seed=3)
    assert a == synthetic.make_problems(50, seed=3)
    assert a[10:20] == synthetic.make_problems(10, seed=3, start=10)  # problem i does not depend on its neighbours
    b = synthetic.make_problems(50, seed=4)
    assert sum(x.problem != y.problem for x, y in zip(a, b)) > 40


def test_answers_match_python_and_solutions_grade_correct():
    problems = synthetic.make_problems(300, seed=0)
    for p in problems:
        assert synthetic.evaluate_expression(p.problem) == int(p.answer), p
        assert extract_boxed(p.solution) == p.answer
        # each line is "a op b = r" with r the true result, and each step uses the previous result
        lines = p.solution.splitlines()[:-1]
        prev = None
        for line, (a, op, b, r) in zip(lines, p.steps):
            assert line == f"{a} {op} {b} = {r}"
            assert r == {"+": a + b, "-": a - b, "*": a * b}[op]
            assert prev is None or prev in (a, b)
            prev = r
        assert p.steps[-1][3] == int(p.answer)
    for p in problems[:20]:  # the project grader agrees (math-verify is slow: a sample suffices)
        assert grade(p.solution, p.answer)
        assert not grade(p.solution, str(int(p.answer) + 1))


def test_difficulty_knobs():
    s = synthetic.TaskSettings(min_ops=4, max_ops=4, operand_min=10, operand_max=20, ops=("+",), mul_operand_max=20)
    for p in synthetic.make_problems(50, seed=1, settings=s):
        assert len(p.steps) == 4
        numbers = [int(x) for x in re.findall(r"\d+", p.problem)]
        assert len(numbers) == 5 and all(10 <= x <= 20 for x in numbers)
        assert "-" not in p.problem and "*" not in p.problem
    with pytest.raises(ValueError, match="min_ops"):
        synthetic.TaskSettings(min_ops=3, max_ops=2)
    with pytest.raises(ValueError, match="ops"):
        synthetic.TaskSettings(ops=("/",))


def test_parentheses_follow_precedence():
    # every problem's text evaluates (by Python's precedence rules) to the chained steps' result; spot-check
    # that both parenthesised and unparenthesised forms occur, so the check above is not vacuous.
    texts = [p.problem for p in synthetic.make_problems(300, seed=0)]
    assert any("(" in t for t in texts) and any("(" not in t for t in texts)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    tok = synthetic.build_tokenizer(synthetic.tokenizer_corpus(n=300))
    path = tmp_path_factory.mktemp("tok")
    synthetic.save_tokenizer(tok, path)
    return path


def test_tokenizer_is_a_small_hf_tokenizer_that_round_trips(tokenizer_dir):
    from transformers import AutoTokenizer

    from capojax.data.templates import render_prompt

    from capojax.tokenizer import load_tokenizer

    # transformers' AutoTokenizer (what vLLM uses) rebuilds a Qwen2Tokenizer from vocab + merges when the folder's
    # config.json says qwen2; ours is laid out so that both paths tokenize identically.
    (tokenizer_dir / "config.json").write_text('{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}')
    auto = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok = load_tokenizer(tokenizer_dir)
    assert len(tok) <= 320
    assert tok.eos_token == synthetic.IM_END and tok.pad_token == synthetic.PAD_TOKEN
    for special in synthetic.SPECIAL_TOKENS:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    for p in synthetic.make_problems(20, seed=9):
        for style in ("qwen-math", "dcpo"):
            text = render_prompt(p.problem, tokenizer=tok, style=style) + p.solution + "\nCONFIDENCE: 0.7"
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text  # exact, spaces included
            assert auto(text, add_special_tokens=False)["input_ids"] == ids
    # numbers are spelled digit by digit
    pieces = tok.convert_ids_to_tokens(tok("123 + 45", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if p.isdigit()] == ["1", "2", "3", "4", "5"]
    # the chat template renders Qwen's ChatML
    chat = tok.apply_chat_template([{"role": "user", "content": "Compute 1 + 2."}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<|im_start|>user\nCompute 1 + 2.<|im_end|>\n<|im_start|>assistant\n"
