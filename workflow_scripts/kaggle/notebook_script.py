"""oofline Kaggle submission notebook (a script kernel), written by `oofline`: do not edit by hand.

Offline: installs oofline and the pinned wheels from the package dataset with pip --no-index, then runs
workflow_scripts.kaggle.inference (the workflow's own predict / ensemble / thresholds / submission code) on
the competition's test file and writes submission.csv to /kaggle/working.
Elsewhere: python oofline_submission.py --input-root DIR --output-dir DIR [--test FILE] [--install-target DIR]
"""
import argparse
import glob
import importlib
import os
import subprocess
import sys

PACKAGE = {}  # filled in when the package is built: dataset, competition, test, sample_submission, threads, runner


def find_dataset(input_root):
    """The package dataset under the input root: /kaggle/input/<dataset slug>, else wherever it is mounted."""
    slug = PACKAGE["dataset"].split("/")[-1]
    candidates = [os.path.join(input_root, slug)]
    candidates += sorted(os.path.dirname(path) for path in
                         glob.glob(os.path.join(input_root, "**", "oofline_package.json"), recursive=True))
    for candidate in candidates:
        if os.path.exists(os.path.join(candidate, "oofline_package.json")):
            return candidate
    sys.exit(f"oofline error: no package dataset {PACKAGE['dataset']} under {input_root} (add it as an input)")


def competition_file(input_root, relative):
    """A competition file: /kaggle/input/<competition>/<relative>, or wherever Kaggle mounted the competition."""
    candidates = [os.path.join(input_root, PACKAGE["competition"], relative)]
    candidates += sorted(glob.glob(os.path.join(input_root, "**", PACKAGE["competition"], relative), recursive=True))
    return next((path for path in candidates if os.path.exists(path)), candidates[0])


def install(dataset_dir, target):
    """pip install the shipped wheels, no network; into `target` (then put on sys.path) when given."""
    wheels = os.path.join(dataset_dir, "wheels")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--find-links", wheels,
               "-r", os.path.join(wheels, "requirements.txt")]
    if target:
        command += ["--target", target]
    print("installing: " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    if target:
        sys.path.insert(0, target)
    importlib.invalidate_caches()


def main(argv=None):
    parser = argparse.ArgumentParser(description="oofline submission: " + PACKAGE.get("package", ""))
    parser.add_argument("--input-root", default="/kaggle/input")
    parser.add_argument("--output-dir", default="/kaggle/working", help="submission.csv is written here")
    parser.add_argument("--test", default=None, help="the test file (default: the competition's)")
    parser.add_argument("--sample-submission", default=None,
                        help="default: the competition's, when it exists; 'none' for the test file's order")
    parser.add_argument("--install-target", default=None, help="install the wheels here instead of site-packages")
    parser.add_argument("--threads", type=int, default=PACKAGE.get("threads", 0))
    parser.add_argument("--timing-out", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    dataset_dir = find_dataset(args.input_root)
    test = args.test or competition_file(args.input_root, PACKAGE["test"])
    sample = args.sample_submission
    if sample is None and PACKAGE.get("sample_submission"):
        default = competition_file(args.input_root, PACKAGE["sample_submission"])
        sample = default if os.path.exists(default) else None
    install(dataset_dir, args.install_target)
    import workflow_scripts
    from workflow_scripts.errors import run_cli

    # the submission shape's runner (workflow_scripts.kaggle.shapes): classification, retrieval or answers
    inference = importlib.import_module(PACKAGE.get("runner") or "workflow_scripts.kaggle.inference")
    print("oofline code: " + os.path.dirname(workflow_scripts.__file__), flush=True)

    options = ["--package", dataset_dir, "--test", test, "--out-dir", args.output_dir, "--threads", str(args.threads)]
    options += ["--sample-submission", sample] if sample and sample != "none" else []
    options += ["--timing-out", args.timing_out] if args.timing_out else []
    if PACKAGE.get("interface") == "inference_server":  # the competition's evaluation API serves the problems
        options += ["--competition-dir", competition_file(args.input_root, "")]
    return run_cli(inference.main, options)


if __name__ == "__main__":
    sys.exit(main())
