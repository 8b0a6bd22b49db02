"""Bad input, counted: one row per malformed config or data file. Each stops with exactly one line naming the
key (its full path) or the file and column, before any job starts, and creates no output.

Configs go through check_config, which the Snakefile runs at parse time (a few rows also through a real
`snakemake -n`); data files through the CLI of the step that reads them (`python -m workflow_scripts.data`, the
first job), in process."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from workflow_scripts.config_check import check_config
from workflow_scripts.errors import OoflineError, run_cli

REPO = Path(__file__).resolve().parent.parent
BASES = {name: yaml.safe_load((REPO / path).read_text())
         for name, path in (("movies", "config.yaml"), ("debates", "demo/debates.yaml"), ("generated", "demo/generated.yaml"))}


def setting(path: str, value):
    """An edit that sets a dotted path (list indices as numbers) to value; value DELETE removes the key."""
    def edit(config):
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = config
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = copy.deepcopy(value)
    return edit


DELETE = object()
RETRIEVAL = "retrieval.movie_plots"
ITER0 = RETRIEVAL + ".iterations.0"

# (base config, edit, the start of the one line expected)
CONFIG_CASES = [
    ("movies", setting("model", {}), "config: (top level): unknown key 'model'"),
    ("movies", setting("output_dir", ""), "config: output_dir: '' should be non-empty"),
    ("movies", setting("container", {"gpu": "x.sif"}), "config: container: unknown key 'gpu'"),
    ("movies", setting("demo.dataset", "films"), "config: demo.dataset: 'films' is not one of"),
    ("movies", setting("demo.n_train", 5), "config: demo.n_train: 5 is less than the minimum of 10"),
    ("movies", setting("data.trian", "x.csv"), "config: data: unknown key 'trian'"),
    ("movies", setting("data.test", DELETE), "config: data: 'test' is a required property"),
    ("movies", setting("task.type", "multiclas"), "config: task.type: 'multiclas' is not one of"),
    ("movies", setting("task.label_colum", "category"), "config: task: unknown key 'label_colum'"),
    ("movies", setting("task.metric", "f2"), "config: task.metric: 'f2' has characters"),
    ("movies", setting("task.id_column", 5), "config: task.id_column: 5 is not of type 'string'"),
    ("movies", setting("task.label_column", DELETE), "config: task.label_column: required for task.type multiclass"),
    ("movies", setting("folds.n_fold", 3), "config: folds: unknown key 'n_fold'"),
    ("movies", setting("folds.n_folds", "5"), "config: folds.n_folds: '5' is not of type 'integer'"),
    ("movies", setting("folds.scheme", "strat"), "config: folds.scheme: 'strat' is not one of"),
    ("movies", setting("folds.group_column", DELETE), "config: folds.group_column: required for a group fold scheme"),
    ("movies", setting("model_defaults.epoch", 2), "config: model_defaults: unknown key 'epoch'"),
    ("movies", setting("models.minilm.lr", "fast"), "config: models.minilm.lr: 'fast' is not of type 'number'"),
    ("movies", setting("models.minilm.learning_rate", 1e-4), "config: models.minilm: unknown key 'learning_rate'"),
    ("movies", setting("models.minilm.kind", "gpt"), "config: models.minilm.kind: 'gpt' is not one of"),
    ("movies", setting("models.minilm.source", DELETE), "config: models.minilm: 'source' is a required property"),
    ("movies", setting("models.minilm.source", "packaged:bert"), "config: models.minilm.source: unknown 'packaged:bert'"),
    ("movies", setting("models.minilm.folds", []), "config: models.minilm.folds: [] should be non-empty"),
    ("movies", setting("models.minilm.folds", [7]), "config: models.minilm.folds: [7] not below folds.n_folds"),
    ("movies", setting("models.minilm.stages", [{"epochs": 1, "dat": ["x"]}]), "config: models.minilm.stages[0]: unknown key 'dat'"),
    ("movies", setting("models.minilm.resources", {"gpus": 1}), "config: models.minilm.resources: unknown key 'gpus'"),
    ("movies", setting("models.minilm.resources", {"mem_mb": -1}), "config: models.minilm.resources.mem_mb: -1 is less than"),
    ("movies", setting("models.minilm.quantization", "4bit"),
     "config: models.minilm.quantization: encoder_full models have no quantization (a key of encoder_lora, decoder_lora)"),
    ("movies", setting("models.bad name", {"source": "tiny:llama", "kind": "encoder_full"}), "config: models: 'bad name'"),
    ("movies", setting("ensembles.blend.membrs", ["minilm"]), "config: ensembles.blend: unknown key 'membrs'"),
    ("movies", setting("ensembles.blend.members", []), "config: ensembles.blend.members: [] is not valid"),
    ("movies", setting("ensembles.blend.members", ["nosuch"]), "config: ensembles.blend.members: unknown model(s) ['nosuch']"),
    ("movies", setting("ensembles.blend.method", "median"), "config: ensembles.blend.method: 'median' is not one of"),
    ("movies", setting("ensembles.blend.member_top_k", 0), "config: ensembles.blend.member_top_k: 0 is less than"),
    ("movies", setting("submissions.blend_top3.format", "csv"), "config: submissions.blend_top3.format: 'csv' is not one of"),
    ("movies", setting("submissions.blend_top3.source", "nosuch"), "config: submissions.blend_top3.source: 'nosuch' is not a model"),
    ("movies", setting("submissions.blend_top3.top_k", "3"), "config: submissions.blend_top3.top_k: '3' is not of type"),
    ("movies", setting("submissions.blend_top3.threshold", True), "config: submissions.blend_top3: unknown key 'threshold'"),
    ("movies", setting("submissions.blend_top3.thresholds", True), "config: submissions.blend_top3.thresholds: add thresholds.blend"),
    ("movies", setting("submissions.movie_plots", {"source": "blend"}), "config: submissions.movie_plots: retrieval.movie_plots also"),
    ("movies", setting("thresholds", {"blend": {"method": "grid"}}), "config: thresholds.blend: a multiclass task has no binary"),
    ("movies", setting("register.extra", "nosuch"), "config: register.extra: no submission is called 'nosuch'"),
    ("movies", setting(RETRIEVAL + ".iterations", []), "config: retrieval.movie_plots.iterations: [] should be non-empty"),
    ("movies", setting(RETRIEVAL + ".valid_fold", 9), "config: retrieval.movie_plots.valid_fold: 9 is not below n_folds=4"),
    ("movies", setting(RETRIEVAL + ".models", {"minilm": 3}), "config: retrieval.movie_plots.models.minilm: 3 is not of type"),
    ("movies", setting(RETRIEVAL + ".embedder_inference.pooling_method", "max"),
     "config: retrieval.movie_plots.embedder_inference.pooling_method: 'max' is not one of"),
    ("movies", setting(ITER0 + ".mine.negative_numbr", 15), "config: retrieval.movie_plots.iterations[0].mine: unknown key 'negative_numbr'"),
    ("movies", setting(ITER0 + ".reranker.mine.range_for_sampling", "2to15"),
     "config: retrieval.movie_plots.iterations[0].reranker.mine.range_for_sampling: '2to15' has characters"),
    ("movies", setting(ITER0 + ".embedder.lora_rnk", 8), "config: retrieval.movie_plots.iterations[0].embedder: unknown key 'lora_rnk'"),
    ("movies", setting(RETRIEVAL + ".iterations.1.teacher", "zero"), "config: retrieval.movie_plots.iterations[1].teacher: 'zero' has characters"),
    ("debates", setting("thresholds.blend.method", "best"), "config: thresholds.blend.method: 'best' is not one of"),
    ("debates", setting("thresholds.blend.weight", 2), "config: thresholds.blend.weight: 2 is greater than the maximum of 1"),
    ("debates", setting("thresholds.blend.target_rates", {"is_democrat": 1.5}),
     "config: thresholds.blend.target_rates.is_democrat: 1.5 is greater than the maximum of 1"),
    ("debates", setting("task.heads.0.type", "binari"), "config: task.heads[0].type: 'binari' is not one of"),
    ("debates", setting("task.heads.1.colum", "x"), "config: task.heads[1]: unknown key 'colum'"),
    ("generated", setting("soft_labels.teacher.temperature", 0), "config: soft_labels.teacher.temperature: 0 is less than or equal"),
    ("generated", setting("label_correction.teacher.action", "fix"), "config: label_correction.teacher.action: 'fix' is not one of"),
    ("generated", setting("label_correction.teacher.top_percnt", 5), "config: label_correction.teacher: unknown key 'top_percnt'"),
    # 2 folds: an inner teacher without the student's fold and the row's fold would have nothing to train on
    ("generated", setting("label_correction.teacher.nested", True),
     "config: models.corrected: its nested teacher labels need inner teacher models trained without 2 folds"),
    ("generated", setting("models.teacher.corrected_by", "corrected"),
     "config: models.teacher: teacher labels go round in a circle (teacher -> corrected -> teacher)"),
    ("generated", setting("votes.smol_all.strategies", ["mode"]), "config: votes.smol_all.strategies[0]: 'mode' is not one of"),
    ("generated", setting("votes.smol_all.answers", []), "config: votes.smol_all.answers: [] should be non-empty"),
    ("generated", setting("answers.samples", 0), "config: answers.samples: 0 is less than the minimum of 1"),
    ("generated", setting("answers.prompts", {"mine": 5}), "config: answers.prompts.mine: 5 is not valid under any of the given schemas"),
    ("movies", setting("models.minilm.select_epoch", "Best"), "config: models.minilm.select_epoch: 'Best' is not one of ['last', 'best']"),
    ("movies", setting("models.minilm_embed.select_epoch", "best"),
     "config: models.minilm_embed.select_epoch: embedding_head models have no select_epoch (a key of encoder_full,"),
    ("movies", setting(ITER0 + ".embedder.select_checkpoint", "top"),
     "config: retrieval.movie_plots.iterations[0].embedder.select_checkpoint: 'top' is not last, best or a whole epoch number K"),
    ("movies", lambda c: [setting(RETRIEVAL + ".valid_fold", None)(c), setting(RETRIEVAL + ".submit", "last")(c),
                          setting(ITER0 + ".reranker.select_checkpoint", "best")(c)],
     "config: retrieval.movie_plots.iterations[0].reranker.select_checkpoint: best chooses an epoch on the valid fold"),
    # a kernel the family has no implementation of: DeBERTa-v2/v3 runs eager only, Gemma-2 eager or flash
    ("movies", setting("models.minilm", {"source": "tiny:deberta-v2", "kind": "encoder_full", "lr": 1e-4,
                                         "attn_implementation": "sdpa"}),
     "config: models.minilm.attn_implementation: sdpa is not available for tiny:deberta-v2 (model_type deberta-v2; "
     "it runs eager)"),
    ("movies", lambda c: [setting("models.tiny_llama_qlora.source", "tiny:gemma2")(c),
                          setting("models.tiny_llama_qlora.attn_implementation", "sdpa")(c)],
     "config: models.tiny_llama_qlora.attn_implementation: sdpa is not available for tiny:gemma2 (model_type gemma2; "
     "it runs flash_attention_2 or eager)"),
]


@pytest.mark.parametrize("base, edit, expected", CONFIG_CASES, ids=[case[2][8:60] for case in CONFIG_CASES])
def test_a_malformed_config_is_one_line_naming_the_key(base, edit, expected):
    config = copy.deepcopy(BASES[base])
    edit(config)
    with pytest.raises(OoflineError) as error:
        check_config(config, REPO)
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    assert message.startswith(expected), message


def test_the_config_table_is_counted():
    assert len(CONFIG_CASES) >= 40


@pytest.mark.parametrize("index", [6, 18, 46])  # a removed key, a typo in a model, one deep in retrieval
def test_snakemake_prints_that_line_last_and_runs_nothing(tmp_path, index):
    base, edit, expected = CONFIG_CASES[index]
    config = copy.deepcopy(BASES[base])
    edit(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--cores", "1",
                             "--configfile", "config.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("oofline error: " + expected)
    assert "Traceback" not in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["config.yaml"]


# ---- data files: the first step that reads them (prepare_data, retrieval_data) ----

MULTICLASS = {"type": "multiclass", "text_template": "Review: {text}", "label_column": "category"}
MULTILABEL = {"type": "multilabel", "text_template": "{text}", "label_columns": ["sad", "fear"]}
MULTIHEAD = {"type": "multihead", "text_template": "{text}",
             "heads": [{"name": "sad", "type": "binary"}, {"name": "category", "type": "multiclass"}]}


def train_frame(n=8):
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)],
                         "category": ["a", "b"] * (n // 2), "sad": [0, 1] * (n // 2), "fear": [1, 0, 0, 1] * (n // 4)})


def competition_test_frame(n=4):
    return pl.DataFrame({"id": [f"t{i}" for i in range(n)], "text": [f"test {i}" for i in range(n)]})


def csv_text(frame):
    return frame.write_csv()


def with_value(frame, column, row, value):
    values = frame[column].to_list()
    values[row] = value
    return frame.with_columns(pl.Series(column, values, dtype=pl.String if isinstance(value, str) or value is None
                                        and frame[column].dtype == pl.String else None))


# (name, task, {file name: bytes or None (absent)}, fragments the one line must hold)
def data_case(name, task=MULTICLASS, train=None, test=None, expected=()):
    files = {"train.csv": csv_text(train_frame()).encode() if train is None else train,
             "test.csv": csv_text(competition_test_frame()).encode() if test is None else test}
    return pytest.param(task, files, expected, id=name)


TRAIN, TEST = train_frame(), competition_test_frame()
DATA_CASES = [
    data_case("missing train file", train=b"<absent>", expected=("file not found", "train.csv")),
    data_case("missing test file", test=b"<absent>", expected=("file not found", "test.csv")),
    data_case("empty train file", train=b"", expected=("train.csv",)),
    data_case("train without id column", train=csv_text(TRAIN.drop("id")).encode(), expected=("train.csv", "'id'", "task.id_column")),
    data_case("test without id column", test=csv_text(TEST.drop("id")).encode(), expected=("test.csv", "'id'")),
    data_case("train text column renamed", train=csv_text(TRAIN.rename({"text": "review"})).encode(), expected=("train.csv", "'text'", "task.text_template")),
    data_case("test text column renamed", test=csv_text(TEST.rename({"text": "Text"})).encode(), expected=("test.csv", "'text'")),
    data_case("label column missing", train=csv_text(TRAIN.drop("category")).encode(), expected=("train.csv", "'category'", "task.label_column")),
    data_case("duplicate train ids", train=csv_text(with_value(TRAIN, "id", 1, "r0")).encode(), expected=("train.csv", "'id'", "duplicate")),
    data_case("duplicate test ids", test=csv_text(with_value(TEST, "id", 1, "t0")).encode(), expected=("test.csv", "'id'", "duplicate")),
    data_case("ids shared by train and test", test=csv_text(with_value(TEST, "id", 2, "r3")).encode(), expected=("test.csv", "train.csv", "r3")),
    data_case("train id with a null", train=b"id,text,category\nr0,x,a\n,y,b\nr2,z,a\n", expected=("train.csv", "'id'", "empty ids")),
    data_case("test id with a null", test=b"id,text\nt0,x\n,y\n", expected=("test.csv", "'id'", "empty ids")),
    data_case("test file with a header and no rows", test=b"id,text\n", expected=("test.csv", "no rows")),
    data_case("train file with a header and no rows", train=b"id,text,category\n", expected=("train.csv", "no rows")),
    data_case("empty text", train=csv_text(with_value(TRAIN, "text", 2, "  ")).encode(), expected=("train.csv", "empty text", "text_template")),
    data_case("missing label", train=csv_text(with_value(TRAIN, "category", 2, None)).encode(), expected=("train.csv", "'category'", "missing labels")),
    data_case("labelled test with an unseen class", test=csv_text(TEST.with_columns(pl.lit("zzz").alias("category"))).encode(),
              expected=("test.csv", "'category'", "never seen")),
    data_case("a fold column in the training data", train=csv_text(TRAIN.with_columns(pl.lit(0).alias("fold"))).encode(),
              expected=("train.csv", "'fold'")),
    data_case("a fold column in the test data", test=csv_text(TEST.with_columns(pl.lit(0).alias("fold"))).encode(),
              expected=("test.csv", "'fold'")),
    data_case("non-UTF-8 text", train="id,text,category\nr0,caf\u00e9,a\nr1,na\u00efve,b\n".encode("latin-1"), expected=("train.csv", "utf")),
    data_case("ragged csv row", train=b"id,text,category\nr0,x,a\nr1,y,b,extra,more\n", expected=("train.csv",)),
    data_case("unsupported file type", train=b"<xlsx>", expected=("train.xlsx", "unsupported file type")),
    data_case("multilabel column holding strings", MULTILABEL,
              train=csv_text(TRAIN.with_columns(pl.Series("sad", ["yes", "no"] * 4))).encode(), expected=("train.csv", "'sad'", "0 and 1")),
    data_case("multilabel column with a 2", MULTILABEL, train=csv_text(with_value(TRAIN, "sad", 0, 2)).encode(), expected=("train.csv", "'sad'", "0 and 1")),
    data_case("multilabel column never positive", MULTILABEL, train=csv_text(TRAIN.with_columns(pl.lit(0).alias("fear"))).encode(),
              expected=("train.csv", "'fear'", "always 0")),
    data_case("multilabel column missing", MULTILABEL, train=csv_text(TRAIN.drop("fear")).encode(), expected=("train.csv", "'fear'", "task.label_columns[1]")),
    data_case("multihead binary head holding strings", MULTIHEAD,
              train=csv_text(TRAIN.with_columns(pl.Series("sad", ["y", "n"] * 4))).encode(), expected=("train.csv", "'sad'", "0 and 1")),
    data_case("multihead head column missing", MULTIHEAD, train=csv_text(TRAIN.drop("category")).encode(), expected=("train.csv", "'category'", "task.heads[1].name")),
    data_case("label template column missing", {**MULTICLASS, "label_template": "{category}:{misconception}"},
              expected=("train.csv", "misconception", "task.label_template")),
]


@pytest.mark.parametrize("task, files, expected", DATA_CASES)
def test_a_malformed_data_file_is_one_line_naming_the_file_and_column(tmp_path, capsys, task, files, expected):
    from workflow_scripts import data

    paths = {}
    for name, content in files.items():
        if content == b"<xlsx>":
            name = name.replace(".csv", ".xlsx")
            content = b"PK\x03\x04"
        paths[name.split(".")[0]] = tmp_path / name
        if content != b"<absent>":
            (tmp_path / name).write_bytes(content)
    out = tmp_path / "results"
    argv = ["--train", str(paths["train"]), "--test", str(paths["test"]), "--task", __import__("json").dumps(task),
            "--train-out", str(out / "train.parquet"), "--test-out", str(out / "test.parquet"),
            "--labels-out", str(out / "labels.json"), "--targets-out", str(out / "targets.parquet")]
    assert run_cli(data.main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oofline error: "), lines
    for fragment in expected:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    assert not out.exists() or not any(out.iterdir())


def retrieval_files(tmp_path, queries=None, corpus=None):
    corpus = corpus if corpus is not None else pl.DataFrame({"id": ["p1", "p2", "p3"], "text": ["plot 1", "plot 2", "plot 3"]})
    queries = queries if queries is not None else pl.DataFrame(
        {"id": ["q1", "q2"], "query": ["review 1", "review 2"], "positive_ids": [["p1"], ["p2", "p3"]]})
    corpus.write_parquet(tmp_path / "corpus.parquet")
    queries.write_parquet(tmp_path / "queries.parquet")
    pl.DataFrame({"id": ["x1"], "query": ["new review"]}).write_parquet(tmp_path / "test_queries.parquet")


QUERIES = pl.DataFrame({"id": ["q1", "q2"], "query": ["review 1", "review 2"], "positive_ids": [["p1"], ["p2", "p3"]]})
CORPUS = pl.DataFrame({"id": ["p1", "p2", "p3"], "text": ["plot 1", "plot 2", "plot 3"]})
RETRIEVAL_DATA_CASES = [
    pytest.param(QUERIES.drop("positive_ids"), None, ("queries.parquet", "'positive_ids'"), id="queries without positives"),
    pytest.param(QUERIES.rename({"query": "question"}), None, ("queries.parquet", "'query'"), id="queries column renamed"),
    pytest.param(QUERIES.with_columns(pl.Series("positive_ids", [["p1"], ["p9"]])), None, ("queries.parquet", "p9"), id="positive not in corpus"),
    pytest.param(None, CORPUS.with_columns(pl.Series("id", ["p1", "p1", "p3"])), ("corpus.parquet", "'id'", "duplicate"), id="corpus duplicate ids"),
    pytest.param(None, CORPUS.drop("text"), ("corpus.parquet", "'text'"), id="corpus without text"),
]


@pytest.mark.parametrize("queries, corpus, expected", RETRIEVAL_DATA_CASES)
def test_malformed_retrieval_files_are_one_line_naming_file_and_column(tmp_path, capsys, queries, corpus, expected):
    from workflow_scripts.retrieval import data as retrieval_data

    retrieval_files(tmp_path, queries, corpus)
    out = tmp_path / "results"
    argv = ["--source", "files", "--queries", str(tmp_path / "queries.parquet"), "--corpus", str(tmp_path / "corpus.parquet"),
            "--test-queries", str(tmp_path / "test_queries.parquet"), "--out-queries", str(out / "q.parquet"),
            "--out-corpus", str(out / "c.parquet"), "--out-test-queries", str(out / "t.parquet")]
    assert run_cli(retrieval_data.main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oofline error: "), lines
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()


def test_the_data_table_is_counted():
    assert len(DATA_CASES) + len(RETRIEVAL_DATA_CASES) >= 25


def test_a_csv_with_a_byte_order_mark_keeps_its_id_column_and_ids(tmp_path):
    """Not an error: a BOM (Excel's UTF-8 csv) must not rename the first column to '\\ufeffid'."""
    from workflow_scripts.io import read_table

    (tmp_path / "test.csv").write_bytes(b"\xef\xbb\xbfid,text\n0900000,x\n0900001,y\n")
    frame = read_table(tmp_path / "test.csv")
    assert frame.columns == ["id", "text"] and frame["id"].to_list() == ["0900000", "0900001"]


def test_a_failed_run_ends_with_the_steps_one_line_and_its_log(tmp_path):
    """A data error in the first job: Snakemake's report (the shell command twice, ~60 lines) comes first, and
    the run's last line is the step's `oofline error:` line with the log to open."""
    (tmp_path / "train.csv").write_text(csv_text(TRAIN))
    (tmp_path / "test.csv").write_text(csv_text(TEST.rename({"text": "Text"})))
    config = {"data": {"train": "train.csv", "test": "test.csv"}, "task": MULTICLASS,
              "folds": {"scheme": "stratified", "n_folds": 2},
              "models": {"tiny": {"source": "tiny:llama", "kind": "encoder_full"}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "1",
                             "results/folds.parquet"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "oofline error: test.csv: column(s) ['text'] used by task.text_template are missing (have ['id', 'Text'])"
        " (log: results/logs/prepare_data.log)")
    assert not (tmp_path / "results" / "data").exists() and not (tmp_path / "results" / "folds.parquet").exists()
