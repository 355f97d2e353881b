"""The plain commands' parser: full option names only, ``_`` and ``-`` spellings alike."""

import pytest

from tx_suite.cli.classify import build_parser as classify_parser
from tx_suite.cli.compare import build_parser as compare_parser
from tx_suite.cli.generate import build_parser as generate_parser
from tx_suite.cli.translate import build_parser as translate_parser
from tx_suite.utils.option_parser import OptionParser


def test_both_spellings_and_no_prefixes():
    p = OptionParser(prog="t")
    p.add_argument("--beam_size", type=int, default=5)
    p.add_argument("--no-resize", action="store_true")
    p.add_argument("words", nargs="*")
    args = p.parse_args(["--beam-size", "3", "--no_resize", "x"])
    assert (args.beam_size, args.no_resize, args.words) == (3, True, ["x"])
    assert p.parse_args(["--beam-size=4"]).beam_size == 4
    assert p.parse_args(["--", "--beam-size"]).words == ["--beam-size"]  # after --: text, not an option
    with pytest.raises(SystemExit):
        p.parse_args(["--beam", "3"])  # argparse took a prefix for --beam_size


def test_sibling_commands_take_each_others_spelling(capsys):
    # each of these failed: the flag exists in the other spelling only (or in a sibling command)
    assert translate_parser().parse_args(["--ckpt-path", "m.ckpt", "--beam-size", "2", "x"]).beam_size == 2
    assert compare_parser().parse_args(["--no-plot"]).no_plot is True
    assert classify_parser().parse_args(["--ckpt", "m.ckpt", "--top-k", "3", "a.png"]).topk == 3
    assert generate_parser().parse_args(["--ckpt", "m.ckpt", "--runs-dir", "r"]).runs_dir == "r"
    with pytest.raises(SystemExit):
        translate_parser().parse_args(["--ckpt", "m.ckpt", "x"])  # was taken for --ckpt_path
    assert "required: --ckpt_path" in capsys.readouterr().err
