"""The digits example trains to >= 95 % test accuracy (MLP and CNN), and `kiln train` prints it."""

import argparse

import pytest

from kiln.cli_train import train_main
from kiln.train.digits import train_digits


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_digits_reaches_95_percent(model):
    result = train_digits(model)
    assert result["test_accuracy"] >= 0.95, result["history"][-1]
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0] / 10


def test_cli_prints_epochs_and_test_accuracy(capsys):
    rc = train_main(argparse.Namespace(example="digits", model="mlp", epochs=2, device="cpu"))
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("epoch ") == 2 and "loss" in out and "test_accuracy" in out
    assert "test accuracy: 0." in out


def test_cli_rejects_bad_arguments(capsys):
    assert train_main(argparse.Namespace(example="digits", model="mlp", epochs=0, device="cpu")) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert train_main(argparse.Namespace(example="digits", model="mlp", epochs=1, device="cuda")) == 2
