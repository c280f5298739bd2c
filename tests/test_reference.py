"""reference.py: `lifted <command> --help` and the documentation's reference page describe every option,
from the schemas and the configs, and offer each command only what it accepts."""

import re

import pytest

from lifted_cli import reference
from lifted_cli.cli import main


def test_yaml_comments_follow_nesting_and_continuation_lines():
    text = ("a: 1        # first\n"
            "b:\n"
            "  c: x      # nested, and\n"
            "            # continued\n"
            "  d: 'q#r'  # after a quoted hash\n"
            "# a free comment\n"
            "e: 2\n")
    assert reference.yaml_comments(text) == {"a": "first", "b.c": "nested, and continued", "b.d": "after a quoted hash"}


@pytest.mark.parametrize("command,overrides", [("train", []), ("train", ["scheme=backprop", "arch=resnet",
                                               "task=deblur", "parallel=data", "logger=mlflow"]),
                                               ("train", ["scheme=mac", "arch=unrolled_pnn"]), ("invert", []), ("data", [])])
def test_every_option_of_a_command_line_has_a_description(command, overrides):
    cfg = reference.compose(command, overrides)
    rows = reference.keys(command, cfg)
    assert rows
    missing = [key for key, _, text in rows if not text.strip()]
    assert not missing, f"keys without a description (give the schema's option a help, or the YAML key a comment): {missing}"


def test_help_marks_the_choices_and_lists_only_the_commands_experiments(capsys):
    assert main(["train", "scheme=backprop", "--help"]) == 0
    out = capsys.readouterr().out
    assert "backprop* | bregman" in out and "solver.lr=0.001" in out and "loads mlp_backprop_adam" in out
    assert "perceptron_inversion" not in out and "sparse_dae" in out
    # one line per option: key=value then its description
    assert re.search(r"^  epochs=5 +passes over the training set$", out, re.M)


def test_help_of_a_bad_choice_is_one_line_with_status_2(capsys):
    assert main(["train", "arch=nope", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "arch/nope" in err


@pytest.mark.slow  # composes every option of every group
def test_reference_page_lists_every_option_of_every_group():
    page = reference.markdown()
    for group in ("source", "task", "arch", "scheme", "solver", "parallel", "logger"):
        for name, _ in reference.options(group):
            assert f"`{group}={name}`" in page, (group, name)
    assert "| `arch.hidden` | `[512,512]` |" in page and "`mlp_bregman_isgm`" in page
    assert "| `regularizer` | `tv` |" in page  # invert's own keys
