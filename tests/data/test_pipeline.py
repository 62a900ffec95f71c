"""The grain prompt pipeline: sources, filters and their counts, subset/hold-out, determinism, resumable state."""

import json

import grain
import ml_collections
import pytest

from capojax.data import pipeline, synthetic


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from capojax.tokenizer import load_tokenizer

    path = synthetic.save_tokenizer(synthetic.build_tokenizer(synthetic.tokenizer_corpus(n=200)),
                                    tmp_path_factory.mktemp("tok"))
    return load_tokenizer(path)


def data_cfg(source, **kw):
    c = ml_collections.ConfigDict(dict(source=str(source), subset_size=0, subset_seed=0, holdout=0, max_prompt_len=128,
                                       template="qwen-math"))
    c.synthetic = dict(num_problems=200, seed=0, min_ops=2, max_ops=3, operand_max=9)
    c.update(kw)
    return c


QWEN3_THINK_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"


def load_config(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def write_jsonl(path, rows, extra_lines=()):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return path


def test_filters_are_counted(tmp_path, tok):
    good = [{"problem": f"Compute {i} + 1.", "answer": str(i + 1)} for i in range(30)]
    bad = [
        {"problem": "Compute 1 + 1.", "answer": ""},  # empty answer
        {"problem": "Compute 2 + 2.", "answer": None},  # empty answer
        {"problem": "Compute 3 + 3.", "answer": []},  # empty answer
        {"question": "", "answer": "1"},  # malformed: empty problem
        {"answer": "1"},  # malformed: no problem
        {"problem": "Compute 1 + 1."},  # malformed: no answer field
        {"problem": 12, "answer": "1"},  # malformed: problem is not text
        {"problem": "Compute " + " + ".join(["1"] * 100) + ".", "answer": "100"},  # too long for 128 tokens
    ]
    path = write_jsonl(tmp_path / "d.jsonl", good + bad, extra_lines=["{not json", "[1, 2]"])
    data = pipeline.build_prompt_data(data_cfg(path, holdout=5), tok)
    s = data.stats
    assert (s["rows"], s["malformed"], s["empty_answer"], s["too_long"]) == (40, 6, 3, 1)
    assert (s["usable"], s["train"], s["val"]) == (31, 25, 5)
    assert {e.id for e in data.train} | {e.id for e in data.val} == {str(i) for i in range(30)}
    assert not {e.id for e in data.train} & {e.id for e in data.val}
    e = data.train[0]
    assert e.prompt.startswith("<|im_start|>system\n") and e.problem in e.prompt
    assert list(e.prompt_ids) == tok(e.prompt, add_special_tokens=False)["input_ids"]


def test_nothing_usable_is_a_clear_error(tmp_path, tok):
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "x", "answer": ""}, {"foo": 1}])
    with pytest.raises(pipeline.DataError, match="no usable rows.*1 malformed, 1 with an empty answer"):
        pipeline.build_prompt_data(data_cfg(path), tok)
    with pytest.raises(pipeline.DataError, match="not found"):
        pipeline.build_prompt_data(data_cfg(tmp_path / "missing.jsonl"), tok)
    path = write_jsonl(tmp_path / "long.jsonl", [{"problem": "Compute " + "1 + " * 100 + "1.", "answer": "1"}] * 3)
    with pytest.raises(pipeline.DataError, match="max_prompt_len"):
        pipeline.build_prompt_data(data_cfg(path), tok)


def test_verl_parquet_and_json(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": [{"role": "user", "content": f"What is {i}?" + pipeline.DEEPSCALER_SUFFIX}],
             "reward_model": {"ground_truth": str(i), "style": "rule"}, "extra_info": {"index": i}} for i in range(6)]
    rows.append({"prompt": [{"role": "user", "content": "Empty?"}], "reward_model": {"ground_truth": "", "style": "rule"},
                 "extra_info": {"index": 6}})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    data = pipeline.build_prompt_data(data_cfg(tmp_path / "d.parquet"), tok)
    assert data.stats["empty_answer"] == 1 and data.stats["train"] == 6
    assert sorted(e.problem for e in data.train) == [f"What is {i}?" for i in range(6)]  # suffix stripped
    assert sorted(e.answer for e in data.train) == [str(i) for i in range(6)]
    (tmp_path / "d.json").write_text(json.dumps([{"problem": "Q", "answer": 27.0}, {"problem": "R", "answer": ["1", "2"]}]))
    data = pipeline.build_prompt_data(data_cfg(tmp_path / "d.json"), tok)
    assert sorted(map(str, (e.answer for e in data.train))) == ["27", "['1', '2']"]


def test_subset_and_holdout_are_deterministic_by_seed(tok):
    a = pipeline.build_prompt_data(data_cfg("synthetic", subset_size=50, holdout=10, subset_seed=1), tok)
    b = pipeline.build_prompt_data(data_cfg("synthetic", subset_size=50, holdout=10, subset_seed=1), tok)
    c = pipeline.build_prompt_data(data_cfg("synthetic", subset_size=50, holdout=10, subset_seed=2), tok)
    assert [e.id for e in a.train] == [e.id for e in b.train] and [e.id for e in a.val] == [e.id for e in b.val]
    assert [e.id for e in a.train] != [e.id for e in c.train]
    assert (len(a.train), len(a.val)) == (50, 10)
    # synthetic answers are the task's
    p = synthetic.make_problem(int(a.train[0].id.rsplit("-", 1)[1]), seed=0)
    assert (a.train[0].problem, a.train[0].answer) == (p.problem, p.answer)


def test_iterator_epochs_and_resume(tok):
    data = pipeline.build_prompt_data(data_cfg("synthetic", holdout=0), tok)  # 200 prompts
    ids = lambda b: tuple(b.ids)  # noqa: E731
    it = pipeline.PromptIterator(data.train, batch_size=40, seed=5)
    epoch1 = [ids(next(it)) for _ in range(5)]
    epoch2 = [ids(next(it)) for _ in range(5)]
    assert sorted(sum(epoch1, ())) == sorted(e.id for e in data.train)  # one epoch = every prompt once
    assert sorted(sum(epoch2, ())) == sorted(e.id for e in data.train)
    assert epoch1 != epoch2  # reshuffled each epoch
    again = pipeline.PromptIterator(data.train, batch_size=40, seed=5)
    assert [ids(next(again)) for _ in range(10)] == epoch1 + epoch2  # deterministic
    other = pipeline.PromptIterator(data.train, batch_size=40, seed=6)
    assert ids(next(other)) != epoch1[0]

    it = pipeline.PromptIterator(data.train, batch_size=16, seed=5)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON (orbax JsonSave)
    expected = [next(it) for _ in range(6)]  # crosses the epoch boundary (200 / 16)
    resumed = pipeline.PromptIterator(data.train, batch_size=16, seed=5)
    resumed.set_state(state)
    got = [next(resumed) for _ in range(6)]
    assert [b.ids for b in got] == [b.ids for b in expected]
    assert [b.prompt_ids for b in got] == [b.prompt_ids for b in expected]

    with pytest.raises(pipeline.DataError, match="different prompt set"):
        pipeline.PromptIterator(data.train, batch_size=8, seed=5).set_state(state)


def test_process_shards_split_each_global_batch(tok):
    data = pipeline.build_prompt_data(data_cfg("synthetic"), tok)
    whole = pipeline.PromptIterator(data.train, batch_size=8, seed=0)
    shards = [pipeline.PromptIterator(data.train, batch_size=8, seed=0, shard=grain.sharding.ShardOptions(k, 2))
              for k in range(2)]
    for _ in range(30):
        g = next(whole).ids
        a, b = (next(s).ids for s in shards)
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert sorted(a + b) == sorted(g)
    with pytest.raises(ValueError, match="divisible"):
        pipeline.PromptIterator(data.train, batch_size=7, seed=0, shard=grain.sharding.ShardOptions(0, 2))


def test_deepscaler_file_loads_as_is(shared_data, qwen_tokenizer_dir):
    from capojax.tokenizer import load_tokenizer

    tok = load_tokenizer(qwen_tokenizer_dir)
    path = shared_data / "train" / "deepscaler.jsonl"
    data = pipeline.build_prompt_data(data_cfg(path, subset_size=300, holdout=20, max_prompt_len=1024), tok)
    s = data.stats
    assert (s["rows"], s["malformed"], s["empty_answer"]) == (40_315, 0, 6)  # the README's 6 empty answers
    assert (s["train"], s["val"]) == (300, 20)
    assert all(e.answer for e in data.train) and all(len(e.prompt_ids) <= 1024 for e in data.train)
    assert data.train[0].prompt.endswith("<|im_start|>assistant\n")


def test_chat_template_kwargs_reach_the_training_prompts(tmp_path, qwen3_style_tokenizer_dir):
    """DCPO's non-thinking Qwen3: the preset's enable_thinking=False puts the empty think block into every training
    and validation prompt; without it Qwen3's template leaves the model free to think at length."""
    from capojax.tokenizer import load_tokenizer

    tok = load_tokenizer(qwen3_style_tokenizer_dir)
    assert tok.chat_template  # the folder's tokenizer_config.json carries the template
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": f"Compute {i} + 1.", "answer": str(i + 1)} for i in range(8)])
    dcpo = load_config("dcpo_qwen3_8b").data
    dcpo.update(dict(source=str(path), subset_size=0, holdout=2))
    assert pipeline.chat_template_kwargs(dcpo) == {"enable_thinking": False}
    data = pipeline.build_prompt_data(dcpo, tok)
    assert data.stats["chat_template_kwargs"] == {"enable_thinking": False}
    for e in data.train + data.val:
        assert e.prompt.endswith(QWEN3_THINK_OFF) and e.problem in e.prompt
        assert list(e.prompt_ids) == tok(e.prompt, add_special_tokens=False)["input_ids"]
    thinking = pipeline.build_prompt_data(data_cfg(path, holdout=2, template="dcpo"), tok)
    assert all(not e.prompt.endswith(QWEN3_THINK_OFF) and e.prompt.endswith("<|im_start|>assistant\n")
               for e in thinking.train + thinking.val)
