"""Every command in README.md is run here or by CI (``.ci/run``).

CI runs the README's install and test commands; these tests check that they are the README's, then run the
rest as written, with only size-shrinking flags added (tiny models and data, few trials, short trials): the
main job (train, then sample), the "your own recordings" command, the export CLI row and the Python API
example. Commands and code are read from README.md each time, and every change made to them is an explicit
replacement of text that must be there, so a README edit that breaks a command fails here.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import TINY_FLAGS
from ldns_fast.data import read_dataset, write_dataset
from ldns_fast.run import AUTOENCODER_FILE, AUTOENCODER_REPORT_FILE, DIFFUSION_FILE, SPIKE_HISTORY_FILE

ROOT = Path(__file__).resolve().parents[1]

# Size-shrinking flags of the train CLI: the tiny Lorenz run of the other tests, one S4 block per model (the
# exported ONNX graphs are then small enough to build in seconds).
TINY_TRAIN = [*TINY_FLAGS, "--set", "autoencoder.n_blocks=1", "--set", "denoiser.n_blocks=1"]
SAMPLE_N = 4  # trials the main job samples here (the README: 500)
EXPORT_STEPS = ["--steps", "2"]  # sampler steps unrolled into the ONNX graph (default 20)


def readme() -> str:
    return (ROOT / "README.md").read_text()


def fenced_block(language: str, marker: str, what: str) -> str:
    """The one ```language block of README.md that contains ``marker``, without its fences."""
    blocks = re.findall(rf"^```{language}[ \t]*\n(.*?)^```", readme(), flags=re.M | re.S)
    found = [block.strip() for block in blocks if marker in block]
    assert len(found) == 1, (f"README.md should hold exactly one ```{language} block containing {marker!r} "
                             f"({what}); found {len(found)} among {len(blocks)} ```{language} blocks")
    return found[0]


def one_line(block: str, what: str) -> str:
    assert "\n" not in block, f"README.md: the {what} block should be one command line, got:\n{block}"
    return block


def and_commands(line: str) -> list[list[str]]:
    """The commands of a shell line joined by ``&&``, each as argv."""
    return [shlex.split(part) for part in line.split("&&")]


def module_args(argv: list[str], module: str) -> list[str]:
    """The arguments of ``python -m module ARGS...``."""
    assert argv[:3] == ["python", "-m", module], f"README.md: expected `python -m {module} ...`, got {argv}"
    return argv[3:]


def replace_value(args: list[str], flag: str, old: str, new: str) -> list[str]:
    """``args`` with the value of ``flag`` changed from ``old`` (which must be there) to ``new``."""
    assert flag in args and args[args.index(flag) + 1] == old, f"README.md: expected `{flag} {old}` in {args}"
    i = args.index(flag)
    return [*args[: i + 1], new, *args[i + 2 :]]


def without(args: list[str], flag: str, old: str) -> list[str]:
    """``args`` without ``flag old`` (which must be there)."""
    assert flag in args and args[args.index(flag) + 1] == old, f"README.md: expected `{flag} {old}` in {args}"
    i = args.index(flag)
    return [*args[:i], *args[i + 2 :]]


def value(args: list[str], flag: str) -> str:
    assert flag in args, f"README.md: expected {flag} in {args}"
    return args[args.index(flag) + 1]


def replaced(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"README.md's Python example should contain {old!r} once"
    return text.replace(old, new)


def tiny_setting(key: str) -> int:
    return int(next(flag.split("=")[1] for flag in TINY_FLAGS if flag.startswith(f"{key}=")))


def model_flags() -> list[str]:
    """:data:`TINY_TRAIN` without the Lorenz data sizes (for runs on a dataset file)."""
    out: list[str] = []
    for i, flag in enumerate(TINY_TRAIN):
        if flag.startswith("data.lorenz.") or (flag == "--set" and TINY_TRAIN[i + 1].startswith("data.lorenz.")):
            continue
        out.append(flag)
    return out


def run_module(module: str, args: list[str], cwd: Path, env: dict[str, str]) -> None:
    """``python -m module args`` in ``cwd`` with this interpreter; fails with its output unless it exits 0."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (f"`python -m {module} {shlex.join(args)}` exited {result.returncode}\n"
                                    f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")


def ci_commands() -> list[list[str]]:
    """Every simple command of ``.ci/run`` as argv (lines split at ``&&``, ``||`` and ``;``)."""
    commands = []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        for part in re.split(r"&&|\|\||;", line):
            argv = shlex.split(part, comments=True)
            if argv:
                commands.append(argv)
    return commands


def main_job() -> tuple[list[str], list[str]]:
    line = one_line(fenced_block("bash", "python -m ldns_fast.sample", "the main job"), "main job")
    commands = and_commands(line)
    assert len(commands) == 2, f"README.md: the main job should be `train && sample`, got {line!r}"
    return module_args(commands[0], "ldns_fast.train"), module_args(commands[1], "ldns_fast.sample")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of the commands: generated Lorenz data cached under this session's temporary folder,
    as the ``lorenz_cache`` fixture does (and TRITON_INTERPRET, set by conftest, inherited)."""
    return {**os.environ, "LDNS_FAST_CACHE": str(tmp_path_factory.getbasetemp() / "lorenz-cache")}


@pytest.fixture(scope="module")
def lorenz_run(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> tuple[Path, Path, Path]:
    """The main job run in a fresh working folder: ``(working folder, run folder, samples file)``."""
    train, sample = main_job()
    work = tmp_path_factory.mktemp("readme-main-job")
    run_module("ldns_fast.train", [*train, *TINY_TRAIN], work, env)
    run_module("ldns_fast.sample", replace_value(sample, "--n", "500", str(SAMPLE_N)), work, env)
    return work, work / value(train, "--out"), work / value(sample, "--out")


def test_readme_install_and_test_commands_are_what_ci_runs() -> None:
    ci = ci_commands()
    install = and_commands(one_line(fenced_block("bash", "pip install", "the CPU install"), "install"))
    readme_pip = [argv for argv in install if argv[:2] == ["pip", "install"]]
    ci_pip = [[a for a in argv if a not in ("-q", "--quiet")] for argv in ci if argv[:2] == ["pip", "install"]]
    assert len(readme_pip) == 1 and len(ci_pip) == 1, (readme_pip, ci_pip)
    assert readme_pip == ci_pip, "the README's install command differs from the one .ci/run runs"
    assert install[0][:3] == ["python3", "-m", "venv"] and any(argv[:3] == ["python3", "-m", "venv"] for argv in ci)

    tests = shlex.split(one_line(fenced_block("bash", "pytest", "the test command"), "test"))
    assert tests == ["python", "-m", "pytest", "tests", "-q"]
    assert tests in ci, "the README's test command is not what .ci/run runs"


def test_main_job_trains_and_samples(lorenz_run: tuple[Path, Path, Path]) -> None:
    _, run, samples = lorenz_run
    for name in (AUTOENCODER_FILE, DIFFUSION_FILE, AUTOENCODER_REPORT_FILE, "config.yaml", "metrics.csv"):
        assert (run / name).is_file(), f"the main job wrote no {run / name}"
    assert samples.parent == run
    data = read_dataset(samples)  # validates the format (integer counts >= 0, lengths, ...)
    T, N = tiny_setting("data.lorenz.n_bins"), tiny_setting("data.lorenz.n_neurons")
    assert data.spikes.shape == (SAMPLE_N, T, N) and (data.lengths == T).all()
    assert np.issubdtype(data.spikes.dtype, np.integer) and data.spikes.min() >= 0
    assert data.rates is not None and np.isfinite(data.rates).all() and data.rates.min() >= 0


def test_own_recordings_command(tmp_path: Path, env: dict[str, str]) -> None:
    line = one_line(fenced_block("bash", "--data my_data.h5", "training on your own recordings"), "own recordings")
    (argv,) = and_commands(line)
    args = module_args(argv, "ldns_fast.train")
    # Poisson counts [trials, time, neurons] with a reach direction per trial: denoiser.cond_drop drops the
    # conditions for classifier-free guidance, so the data have some.
    rng = np.random.default_rng(0)
    n, T, N = 24, 32, 6
    angle = rng.uniform(0, 2 * np.pi, n)
    write_dataset(tmp_path / value(args, "--data"), rng.poisson(0.5, (n, T, N)), bin_width=0.01,
                  conditions=np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32))
    run_module("ldns_fast.train", [*args, *model_flags()], tmp_path, env)

    run = tmp_path / value(args, "--out")
    for name in (AUTOENCODER_FILE, DIFFUSION_FILE, SPIKE_HISTORY_FILE, AUTOENCODER_REPORT_FILE):
        assert (run / name).is_file(), f"the README's own-recordings command wrote no {run / name}"
    assert json.loads((run / AUTOENCODER_REPORT_FILE).read_text())["n_trials"] > 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["denoiser"]["cond_drop"] == 0.1 and config["denoiser"]["cond_dim"] == 2
    assert config["autoencoder"]["n_neurons"] == N and config["spike_history"]["enabled"] is True


def python_example() -> str:
    return fenced_block("python", "ldns_fast.load(", "the Python API example")


ONNX_PART = "from ldns_fast.export import OnnxSampler"


def torch_example(code: str, n_neurons: int) -> tuple[str, dict]:
    """The Python example's code at a small size and the namespace to run it in (``spikes`` given)."""
    code = replaced(code, "model.sample(100, length=256,", "model.sample(3, length=40,")
    spikes = torch.poisson(torch.full((2, n_neurons, 30), 0.5), generator=torch.Generator().manual_seed(0))
    return code, {"spikes": spikes}


def check_torch_results(ns: dict, n_neurons: int) -> None:
    out, z, rates = ns["out"], ns["z"], ns["rates"]
    C = tiny_setting("autoencoder.latent")
    assert out.latents.shape == (3, C, 40) and out.rates.shape == out.spikes.shape == (3, n_neurons, 40)
    assert out.lengths.tolist() == [40] * 3 and (out.spikes >= 0).all() and torch.isfinite(out.rates).all()
    assert z.shape == (2, C, 30) and rates.shape == (2, n_neurons, 30)
    assert torch.isfinite(rates).all() and (rates >= 0).all()


def test_python_api_example(lorenz_run: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    work, _, _ = lorenz_run
    torch_part, found, _ = python_example().partition(ONNX_PART)
    assert found, f"README.md's Python example should contain {ONNX_PART!r}"
    n_neurons = tiny_setting("data.lorenz.n_neurons")
    code, ns = torch_example(torch_part, n_neurons)
    monkeypatch.chdir(work)  # the example's relative runs/lorenz is the main job's run
    exec(compile(code, "README.md (Python API)", "exec"), ns)
    check_torch_results(ns, n_neurons)


def test_python_api_example_with_onnx(lorenz_run: tuple[Path, Path, Path], env: dict[str, str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ldns_fast.export.__main__ import parser
    from ldns_fast.export.onnx_export import choose_conv

    work, run, _ = lorenz_run
    code = python_example()
    run_arg = str(run.relative_to(work))

    # The export the example names for its long trial must make a graph that holds it (a chunked one) ...
    named = re.search(r"#.*?(python -m ldns_fast\.export .*)$", code, flags=re.M)
    assert named, "README.md's Python example should name the export command that makes runs/lorenz/onnx"
    export_args = module_args(shlex.split(named.group(1)), "ldns_fast.export")
    long = re.search(r"sample_to_hdf5\(\"long\.h5\", lengths=\[([0-9_]+)\]", code)
    assert long, "README.md's Python example should sample lengths=[...] into long.h5"
    options = parser().parse_args(export_args)
    assert options.max_length is not None and options.max_length >= int(long.group(1))
    assert choose_conv(options.conv, options.max_length) == "chunked"
    # ... and is the export CLI row plus --max-length. A chunked graph takes about a minute to build, so the
    # example runs here on the row's graph (direct: an L x L Toeplitz product), with a short trial.
    row = re.search(r"^\| `(python -m ldns_fast\.export [^`]*)` \|", readme(), flags=re.M)
    assert row, "README.md's command-line table should hold a `python -m ldns_fast.export ...` row"
    row_args = module_args(shlex.split(row.group(1).replace("RUN", run_arg)), "ldns_fast.export")
    assert without(export_args, "--max-length", str(options.max_length)) == row_args, (export_args, row_args)
    run_module("ldns_fast.export", [*row_args, *EXPORT_STEPS], work, env)

    n_neurons = tiny_setting("data.lorenz.n_neurons")
    code, ns = torch_example(code, n_neurons)
    code = replaced(code, f"lengths=[{long.group(1)}]", "lengths=[48]")
    monkeypatch.chdir(work)
    exec(compile(code, "README.md (Python API)", "exec"), ns)
    check_torch_results(ns, n_neurons)
    data = read_dataset(work / "long.h5")
    assert data.spikes.shape == (1, 48, n_neurons) and data.lengths.tolist() == [48]
    assert data.spikes.min() >= 0 and np.isfinite(data.rates).all()
