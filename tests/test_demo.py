"""The demo: trains, verifies against optax, writes its outputs, and rejects bad input in one line."""

import json
import pathlib
import subprocess
import sys

import pytest

from gradchain.demo import main
from gradchain.demo.race import available


def test_a_short_race_trains_writes_its_outputs_and_matches_optax(tmp_path, capsys):
    names = [n for n in ("adamw", "sgd") if n in available()]
    assert names == ["adamw", "sgd"]
    code = main(
        [
            "--steps",
            "40",
            "--model",
            "tiny",
            "--optimizers",
            ",".join(names),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "parity" in out and "adamw" in out
    for name in ("loss.png", "metrics.csv", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for row in summary["results"]:
        assert row["final_held_out_loss"] < row["initial_held_out_loss"], row
    # Lock-step replay: float32 rounding of one update, not a trajectory divergence.
    assert summary["parity_max_abs_diff_vs_optax"] < 1e-5
    assert {r["optimizer"] for r in summary["results"]} == set(names)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "optimizer,step,train_loss,held_out_loss,learning_rate"
    assert len(rows) == 1 + 40 * len(names)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps must be a positive number of steps, got 0"),
        (["--optimizers", "adamz"], "unknown optimizer 'adamz'"),
        (["--data", "/nonexistent/corpus.txt"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, message, capsys, tmp_path):
    assert main(args + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradchain: error:") and message in err
    assert len(err.splitlines()) == 1


def test_an_empty_data_file_is_rejected(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["--data", str(empty), "--out", str(tmp_path)]) == 2
    assert "the file is empty" in capsys.readouterr().err


def test_module_and_console_script_answer_help():
    result = subprocess.run(
        [sys.executable, "-m", "gradchain.demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--optimizers" in result.stdout and "--data" in result.stdout
    script = pathlib.Path(sys.executable).parent / "gradchain"  # installed by `pip install`
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "usage: gradchain" in result.stdout


NEW_OPTIMIZERS = [
    "sign_sgd",
    "signum",
    "noisy_sgd",
    "adabelief",
    "yogi",
    "adadelta",
    "adan",
    "novograd",
    "fromage",
    "rprop",
    "sm3",
    "optimistic_gradient_descent",
    "optimistic_adam_v2",
    "polyak_sgd",
    "ademamix",
    "simplified_ademamix",
    "adopt",
    "cautious_adamw",
    "cautious_lion",
    "mars",
    "soap",
    "kron",
    "acprop",
    "cocob",
    "dog",
    "dowg",
    "madgrad",
    "momo",
    "momo_adam",
    "mechanize",
    "sam",
    "dpsgd",
]


def test_the_optimizers_of_issue_18_are_offered_outside_the_default_race():
    from gradchain.demo import _choose

    assert set(NEW_OPTIMIZERS) <= set(available())
    default = {e.name for e in _choose(None, 10, 4)}
    assert default and not default & set(NEW_OPTIMIZERS)


def test_polyak_sgd_gets_the_loss_and_trains(tmp_path):
    args = ["--steps", "8", "--model", "tiny", "--no-parity", "--optimizers", "polyak_sgd"]
    assert main(args + ["--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert row["final_held_out_loss"] < row["initial_held_out_loss"]


def test_sam_and_momo_train_in_the_demo(tmp_path):
    # SAM wraps AdamW (its updates alternate adversarial and outer steps); MoMo needs the loss.
    args = ["--steps", "8", "--model", "tiny", "--no-parity", "--optimizers", "sam,momo"]
    assert main(args + ["--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert [r["optimizer"] for r in rows] == ["sam", "momo"]
    for row in rows:
        assert row["final_held_out_loss"] < row["initial_held_out_loss"], row


def test_dpsgd_gets_per_sequence_gradients_and_trains(tmp_path):
    args = ["--steps", "8", "--model", "tiny", "--no-parity", "--optimizers", "dpsgd"]
    assert main(args + ["--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "summary.json").read_text())["results"]
    assert row["final_held_out_loss"] < row["initial_held_out_loss"]
