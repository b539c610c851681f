"""`python -m costmodel`: the `layer` and `model` subcommands, the flag-only shorthand that
routes to one of them, and one spelling per flag (`--methods`, alias `--method`)."""

from __future__ import annotations

import json

import pytest

from costmodel.cli import main


def _out(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


LAYER = ("--layer", "attention", "--batch", "8", "--embed", "64", "--rank", "2", "--json")
MODEL = ("--model", "gpt2-small", "--seq", "128", "--json")


def test_the_subcommands_and_the_shorthand_print_the_same(capsys):
    assert _out(capsys, "layer", *LAYER) == _out(capsys, *LAYER)
    assert _out(capsys, "model", *MODEL) == _out(capsys, *MODEL)
    assert set(json.loads(_out(capsys, *MODEL))["methods"]) == {"full", "lora"}


def test_methods_and_its_alias_method_are_one_flag(capsys):
    for cmd, rest in (("layer", LAYER), ("model", MODEL)):
        a = _out(capsys, cmd, *rest, "--methods", "lora")
        assert a == _out(capsys, cmd, *rest, "--method", "lora")
        assert a == _out(capsys, cmd, *rest, "--methods=lora")


def test_a_model_only_flag_routes_to_model(capsys):
    """--precision is the model's: with --model it costs the model, alone it asks for a shape."""
    out = json.loads(_out(capsys, *MODEL, "--precision", "fp16-mixed"))
    assert out["config"]["precision"] == "fp16-mixed"
    assert main(["--precision", "fp16-mixed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["python -m costmodel: error: a custom shape needs --d-model and --layers "
                   "(or give --model; see --list)"]


def test_layer_flags_are_not_the_models(capsys):
    assert main(["model", "--crossover"]) == 2
    assert "unrecognized arguments: --crossover" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--help"], "{layer,model}"),
    (["layer", "--help"], "(default: 64)"),        # --batch
    (["model", "--help"], "(default: 4)"),         # --rank
])
def test_help_shows_each_subcommands_own_defaults(capsys, argv, needle):
    try:
        status = main(argv)
    except SystemExit as done:  # argparse's own --help
        status = done.code
    assert status == 0 and needle in capsys.readouterr().out
