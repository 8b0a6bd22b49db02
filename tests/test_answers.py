"""Answer extraction, confidence from the model's own token probabilities, the math demo set, and a tiny-Llama run."""
import numpy as np
import polars as pl
import pytest
import torch

from workflow_scripts.generated.answers import answer_confidence, extract_answer, main
from workflow_scripts.errors import OoflineError, run_cli
from workflow_scripts.generated.generate import Completion, load_causal_lm, sample_completions
from workflow_scripts.generated.math_demo import make_problems


@pytest.mark.parametrize("text,expected", [
    ("2 + 3 = 5, so \\boxed{5}. Check: 6", "5"),            # boxed wins over a later number
    ("first \\boxed{3} then \\boxed{ 1,024 }", "1024"),       # the last box; commas removed
    ("The answer is 42.", "42"),                             # final number
    ("It is -7.0 apples", "-7"),                             # integer-valued float
    ("x = 2.5", "2.5"),
    ("no digits here", None),
])
def test_extract_answer(text, expected):
    answer, span = extract_answer(text)
    assert answer == expected
    if expected is not None:
        assert expected.replace("-", "") in text[span[0]:span[1]].replace(",", "").replace(" ", "") or answer == "-7"


def test_custom_regex_uses_its_group():
    assert extract_answer("Answer: 12 (not 13)", r"Answer:\s*(\d+)") == ("12", (8, 10))
    assert extract_answer("nothing", r"Answer:\s*(\d+)") == (None, None)


def test_math_demo_is_deterministic_with_correct_answers():
    a, b = make_problems(40, seed=0), make_problems(40, seed=0)
    assert a.equals(b) and a.height == 40 and a["id"].n_unique() == 40
    assert not a.equals(make_problems(40, seed=1))
    for row in a.filter(pl.col("kind") == "multiply").iter_rows(named=True):
        boxes, each = [int(t) for t in row["problem"].split() if t.isdigit()][:2]
        assert row["answer"] == boxes * each
    for row in a.filter(pl.col("kind") == "add_small").iter_rows(named=True):
        x, y = [int(t) for t in row["problem"].split() if t.isdigit()]
        assert row["answer"] == x + y
    for row in a.filter(pl.col("kind") == "add_sub").iter_rows(named=True):
        x, y, z = [int(t) for t in row["problem"].replace(".", " ").split() if t.isdigit()]
        assert row["answer"] == x + y - z


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from workflow_scripts.prepare_model import materialise

    root = tmp_path_factory.mktemp("tiny")
    texts = make_problems(40)["problem"].to_list() + ["so the answer is \\boxed{42} and 1,024 more"]
    pl.DataFrame({"text": texts}).write_csv(root / "corpus.csv")
    return materialise("tiny:llama", root / "model", seed=0, corpus=root / "corpus.csv")


def test_confidence_is_the_mean_probability_of_the_answer_tokens(tiny_llama):
    _, tokenizer = load_causal_lm(tiny_llama)
    text = "so the answer is \\boxed{1024} ok"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    probs = list(np.linspace(0.1, 0.9, len(ids)))
    answer, (start, end) = extract_answer(text)
    assert answer == "1024"
    covering = [p for p, (s, e) in zip(probs, offsets) if s < end and e > start]  # reference: tokenizer offsets
    assert covering
    assert answer_confidence(tokenizer, Completion(text, ids, probs), (start, end)) == pytest.approx(np.mean(covering))


@pytest.mark.slow
def test_token_probabilities_match_a_forward_pass(tiny_llama):
    model, tokenizer = load_causal_lm(tiny_llama)
    prompt = "There are 3 boxes with 4 apples in each box."
    [completion] = sample_completions(model, tokenizer, [prompt], temperature=0.8, top_p=0.9, max_new_tokens=10,
                                      seed=0, batch_size=1)
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    full = torch.cat([prompt_ids, torch.tensor([completion.token_ids])], dim=1)
    with torch.no_grad():
        logits = model(full).logits[0, prompt_ids.shape[1] - 1 : -1]
    direct = torch.softmax(logits, -1).gather(1, torch.tensor(completion.token_ids)[:, None])[:, 0]
    np.testing.assert_allclose(completion.token_probs, direct.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_cli_writes_problems_times_samples(tiny_llama, tmp_path):
    make_problems(6).write_parquet(tmp_path / "problems.parquet")
    args = ["--model", str(tiny_llama), "--problems", str(tmp_path / "problems.parquet"), "--prompt-name", "cot_boxed",
            "--samples", "3", "--max-new-tokens", "16", "--batch-size", "6", "--seed", "0", "--threads", "1"]
    assert run_cli(main, args + ["--output", str(tmp_path / "a.parquet")]) == 0
    assert run_cli(main, args + ["--output", str(tmp_path / "b.parquet")]) == 0
    frame = pl.read_parquet(tmp_path / "a.parquet")
    assert frame.height == 18 and frame.columns == ["id", "sample", "prompt", "text", "answer", "confidence", "n_tokens"]
    assert sorted(frame.group_by("id").len()["len"].to_list()) == [3] * 6
    answered = frame.filter(pl.col("answer").is_not_null())
    assert answered["confidence"].null_count() == 0 and answered["confidence"].is_between(0, 1).all()
    assert frame.filter(pl.col("answer").is_null())["confidence"].null_count() == frame["answer"].null_count()
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_bad_prompt_and_column_are_named(tmp_path):
    make_problems(2).rename({"problem": "question"}).write_parquet(tmp_path / "p.parquet")
    base = ["--model", "unused", "--problems", str(tmp_path / "p.parquet"), "--output", str(tmp_path / "o.parquet")]
    with pytest.raises(OoflineError, match="'problem'"):
        main(base + ["--prompt-name", "cot_boxed"])
    with pytest.raises(OoflineError, match="'nope'"):
        main(base + ["--prompt-name", "nope"])
    with pytest.raises(OoflineError, match="answer_regex"):
        main(base + ["--prompt-name", "direct", "--answer-regex", "(unclosed"])
