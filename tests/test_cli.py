"""The main job from the command line: fastconv train / evaluate / predict."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import data, train
from fastconv.cli import main

pytest.importorskip("sklearn")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))


@pytest.fixture(autouse=True)
def keep_thread_count():
    """main() sets the process-wide thread count; give the other tests theirs back."""
    n = fastconv.get_num_threads()
    yield
    fastconv.set_num_threads(n)


def run_cli(cwd, *args):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    proc = subprocess.run([sys.executable, "-m", "fastconv", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def save_png(path, image):
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.round(image[0] * 255).astype(np.uint8), mode="L").save(path)
    return path


def test_train_one_epoch_then_evaluate_and_predict_its_output(tmp_path):
    pytest.importorskip("PIL.Image")
    out = run_cli(tmp_path, "train", "lenet5", "--epochs", "1", "--threads", "1", "--no-progress")
    assert "epoch 1/1: train loss" in out
    m = re.search(r"held-out test accuracy: ([\d.]+)% \((\d+)/359 digits\)", out)
    assert m, out
    accuracy = float(m.group(1))
    assert accuracy > 30                                 # one epoch: far better than the 10 % of chance
    saved = tmp_path / "lenet5-digits.safetensors"       # the default output, in the working directory
    assert saved.exists() and f"saved the model to {saved.name}" in out

    out = run_cli(tmp_path, "evaluate", saved.name)
    assert f"held-out digits accuracy {accuracy:.2f}% ({m.group(2)}/359)" in out

    test = data.load_digits_32("test")
    bright = save_png(tmp_path / "bright.png", test.images[0])
    paper = save_png(tmp_path / "paper.png", 1 - test.images[0])      # dark ink on white: inverted by 'auto'
    out = run_cli(tmp_path, "predict", saved.name, bright.name, paper.name, "--top", "2")
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("bright.png: ") and lines[1].startswith("paper.png: ")
    model = fastconv.load(saved)
    probs = train.predict(model, data.read_image(bright, 32, channels=1)[None])[0]
    top = np.argsort(-probs)[:2]
    expected = ", ".join(f"{k} ({probs[k]:.1%})" for k in top)
    assert lines[0] == f"bright.png: {expected}"
    assert lines[1].split(": ")[1].split(" ")[0] == str(top[0])


def test_resume_from_the_command_line(tmp_path, capsys):
    common = ["train", "lenet5", "--threads", "1", "--no-progress", "--checkpoint-dir", str(tmp_path / "ck"),
              "-o", str(tmp_path / "m.npz")]
    assert main(common + ["--epochs", "1"]) == 0
    assert main(common + ["--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "(epoch 1)" in out and "epoch 2/2" in out
    assert train.load_checkpoint(tmp_path / "ck" / train.CHECKPOINT_NAME)["epoch"] == 2
    assert fastconv.load(tmp_path / "m.npz").metadata["epochs"] == "2"


def test_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(tmp_path / "missing.safetensors")])
    assert e.value.code == 2 and "missing.safetensors" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 16)
    with pytest.raises(SystemExit):
        main(["predict", str(bad), "x.png"])
    assert "bad.safetensors: bad header length" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "lenet5", "--resume"])
    assert "--resume needs --checkpoint-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "nosuchnet", "--threads", "1"])
    assert "unknown model 'nosuchnet'" in capsys.readouterr().err
