"""Hostile or odd options files and overrides: each is one short line naming the problem, at once.

Most checks go through options.schema directly; a few real `main.py` runs hold the end-to-end promise
(exit status 2, one line on stderr, no traceback, nothing written, no hang).
"""
from __future__ import annotations

import codecs
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import run_main

import main
from distiller import build_options as build_run_options
from options import yamlfile
from options.schema import (
    COMMON,
    DERIVED,
    SEED_LIMIT,
    OptionsError,
    build_options,
    defaults,
    parse_overrides,
    read_options_file,
)
from options.yamlfile import MAX_DEPTH, MAX_NODES, show_value

# 9 anchors of 9 aliases each: 9**10 values once expanded, in a few hundred bytes.
BOMB = ("a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
        + f"lr_decay_epochs: [{', '.join(['*a8'] * 9)}]\n")
FLOW_BOMB = "[&a [1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a], &c [*b, *b, *b, *b, *b, *b, *b, *b]," \
            " &d [*c, *c, *c, *c, *c, *c, *c, *c], &e [*d, *d, *d, *d, *d, *d, *d, *d], [*e, *e, *e, *e, *e, *e]]"


# Function calls a refusal may make: a small file takes a few thousand, the largest here (a flow list of 20,000
# values, scanned before its values are counted) 1.5 million; a bomb walked through takes billions. Counted, not
# timed: a busy machine changes the time, not the count.
MAX_CALLS = 20_000_000


def refused_within_calls(call: Any) -> OptionsError:
    """The OptionsError `call()` raises, after checking that it made fewer than MAX_CALLS function calls."""
    made = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal made
        made += event in ("call", "c_call")
        if made > MAX_CALLS:
            sys.setprofile(None)
            raise AssertionError(f"more than {MAX_CALLS} calls: the input is being walked through")
    sys.setprofile(count)
    try:
        call()
    except OptionsError as err:
        return err
    finally:
        sys.setprofile(None)
    raise AssertionError("not refused")


def refused(tmp_path: Path, content: str | bytes, *words: str) -> str:
    """Write `content` as an options file; it must be refused, with a bounded amount of work, with a short message
    holding `words`."""
    path = tmp_path / "opt.yml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    message = str(refused_within_calls(lambda: read_options_file(path)))
    assert len(message) < 300 and "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_alias_bomb_is_refused_at_once(tmp_path):
    assert len(BOMB) < 700
    refused(tmp_path, BOMB, "expands to more than", str(MAX_NODES))


def test_alias_bomb_through_set_is_refused_at_once():
    message = str(refused_within_calls(lambda: build_options({}, [f"lr_decay_epochs={FLOW_BOMB}"])))
    assert "expands to more than" in message and len(message) < 300


def test_aliases_within_limits_still_work(tmp_path):
    path = tmp_path / "opt.yml"
    path.write_text("base: &b {T: 0.2, key_size: 64}\ncocord: {<<: *b, T: 0.3}\nlr_decay_epochs: &d [5, 8]\n")
    given = read_options_file(path)
    assert given["cocord"] == {"T": 0.3, "key_size": 64} and given["lr_decay_epochs"] == [5, 8]


@pytest.mark.parametrize("value", [
    list(range(10**6)), "x" * 10**6, {f"k{i}": i for i in range(10**5)}, 2 ** (2**16), [[[[[["deep"]]]]]],
], ids=["long list", "long string", "big mapping", "huge int", "nested"])
def test_every_user_value_in_a_message_is_bounded(value):
    assert len(show_value(value)) <= 80
    for given in ({"lr_decay_epochs": value}, {"dataset": value}, {"cocord": {"T": value}}):
        with pytest.raises(OptionsError) as caught:
            build_run_options(given)
        assert len(str(caught.value)) < 300 and "\n" not in str(caught.value)


def test_recursive_and_huge_keys_are_bounded():
    loop: list = []
    loop.append(loop)
    assert len(show_value(loop)) <= 80
    keys = ({"x" * 10**6: 1}, {2 ** (2**16): 1}, {"cocord": {"a\nb" * 1000: 1}}, {"lr_decay_epochs": [5, 1] * 10**5})
    for given in keys:
        with pytest.raises(OptionsError) as caught:
            build_run_options(given)
        assert len(str(caught.value)) < 500 and "\n" not in str(caught.value)  # the valid keys are listed


def test_unreadable_yaml_is_one_line(tmp_path):
    refused(tmp_path, "a: 1\n---\nb: 2\n", "line 2", "single document")
    refused(tmp_path, f"seed: {'1' * 5000}\n", "line 1", "cannot read this value")
    refused(tmp_path, "seed: 2024-13-45\n", "line 1", "month")
    refused(tmp_path, "x: [" + "1, " * 20000 + "]\n", "more than")
    refused(tmp_path, "# " + "x" * (yamlfile.MAX_BYTES + 10) + "\n", "byte limit")
    path = tmp_path / "opt.yml"  # YAML's 0b form makes ints over 4300 digits, which repr() refuses to print
    path.write_text(f"seed: 0b{'1' * 20000}\n")
    with pytest.raises(OptionsError, match="'seed' must be in .* got <an integer of 20000 bits>"):
        build_options(read_options_file(path))


def test_the_file_must_be_utf8(tmp_path):
    refused(tmp_path, "data_folder: ./données\n".encode("latin-1"), "is not UTF-8 text", "save it as UTF-8")
    refused(tmp_path, "epochs: 3\n".encode("utf-16"), "is not UTF-8 text", "UTF-16")  # with its byte-order mark
    refused(tmp_path, "epochs: 3\n".encode("utf-16-le"), "is not UTF-8 text", "save it as UTF-8")  # without
    refused(tmp_path, "epochs: 3\n".encode("utf-32"), "is not UTF-8 text")
    refused(tmp_path, "epochs: 3\nseed: \x01\n", "line 2", "control character")
    path = tmp_path / "bom.yml"  # a UTF-8 byte-order mark (Windows editors write one) is fine
    path.write_bytes(codecs.BOM_UTF8 + "epochs: 3\ndata_folder: ./données\n".encode())
    assert read_options_file(path) == {"epochs": 3, "data_folder": "./données"}


@pytest.mark.parametrize("text", [
    "lr_decay_epochs: " + "[" * 500 + "]" * 500,
    "cocord: " + "{a: " * 500 + "1" + "}" * 500,
    "x: " + "[" * 60_000,
    "".join(" " * i + f"k{i}:\n" for i in range(300)),
])
def test_deep_nesting_is_one_line(tmp_path, text):
    refused(tmp_path, text, "nests deeper than", str(MAX_DEPTH))


def test_deep_nesting_through_aliases_and_self_reference(tmp_path):
    chain = "a0: &a0 [[[[[[1]]]]]]\n" + "".join(f"a{i}: &a{i} [[[[[[*a{i - 1}]]]]]]\n" for i in range(1, 6))
    refused(tmp_path, chain, "nests deeper than", "aliases")
    refused(tmp_path, "lr_decay_epochs: &a [1, *a]\n", "contains itself")
    refused(tmp_path, "path: &p {teacher: *p}\n", "contains itself")


@pytest.mark.parametrize("text,key,where", [
    ("epochs: 3\nseed: 1\nepochs: 4\n", "'epochs'", "lines 1 and 3"),
    ("cocord:\n  T: 0.1\n  key_size: 64\n  T: 0.2\n", "'cocord.T'", "lines 2 and 4"),
    ("cocord: {T: 0.1, T: 0.2}\n", "'cocord.T'", "line 1, columns 10 and 18"),
    ("speed:\n  amp: on\n  amp: true\n", "'speed.amp'", "lines 2 and 3"),
])
def test_duplicate_keys_name_the_key_and_both_lines(tmp_path, text, key, where):
    refused(tmp_path, text, key, where, "twice")


def test_the_loader_stays_safe(tmp_path):
    assert issubclass(yamlfile._Loader, yaml.SafeLoader)
    refused(tmp_path, "epochs: !!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("text,words", [
    ("false\n", ["only False"]), ("0\n", ["only 0"]), ("[]\n", ["only []"]), ("hello\n", ["only 'hello'"]),
    ("- epochs: 3\n", ["only [{'epochs': 3}]"]), ("", ["is empty"]), ("# just a comment\n", ["is empty"]),
])
def test_the_file_must_be_a_mapping(tmp_path, text, words):
    refused(tmp_path, text, *words, "train_student.yml")


def test_not_a_regular_file(tmp_path):
    with pytest.raises(OptionsError, match=r"is a directory; give an options file such as options/train_student"):
        read_options_file(tmp_path)
    with pytest.raises(OptionsError, match=r"nope\.yml not found"):
        read_options_file(tmp_path / "nope.yml")


def test_seed_leaves_room_for_trials():
    assert SEED_LIMIT == 2**32 - 2**16
    assert build_options({"seed": SEED_LIMIT - 1})["seed"] == SEED_LIMIT - 1
    assert build_options({}, ["seed=0"])["seed"] == 0
    for seed in (SEED_LIMIT, 2**32, 2**64, -1):
        with pytest.raises(OptionsError, match=rf"'seed' must be in \[0, {SEED_LIMIT}\)"):
            build_options({"seed": seed})


@pytest.mark.parametrize("overrides,words", [
    (["epochs=3", "epochs=4"], ["'epochs' is given twice", "'epochs=3' and 'epochs=4'"]),
    (["cocord.T=0.1", "seed=1", "cocord.T=0.2"], ["'cocord.T' is given twice"]),
    (["cocord={T: 0.1}", "cocord.T=0.2"], ["both set 'cocord.T'"]),
    (["cocord.T=0.2", "cocord={key_size: 8}"], ["both set 'cocord.T'"]),
    (["cocord..T=1"], ["key=value"]), (["=3"], ["key=value"]),
    (["cocord={T: 1, T: 2}"], ["'T' twice", "columns"]),
])
def test_bad_override_lists(overrides, words):
    with pytest.raises(OptionsError) as caught:
        parse_overrides(overrides)
    for word in words:
        assert word in str(caught.value), str(caught.value)


def test_an_override_that_is_not_yaml_is_text():
    assert parse_overrides(["path.teacher=a: b: c.pth", "cocord.T=0.1", "cocord.key_size=8"]) == \
        {"path": {"teacher": "a: b: c.pth"}, "cocord": {"T": 0.1, "key_size": 8}}


def test_user_paths_expand_home(tmp_path):
    home = os.path.expanduser("~")
    given = {"data_folder": "~/cifar", "experiments_dir": "~/runs", "path": {"teacher": "~/t.pth", "resume": None}}
    opt = build_options(given, ["path.resume=~/run/trial_1"])
    assert opt["data_folder"] == os.path.join(home, "cifar") and opt["experiments_dir"] == os.path.join(home, "runs")
    assert opt["path"] == {"teacher": os.path.join(home, "t.pth"), "resume": os.path.join(home, "run/trial_1")}
    assert isinstance(opt["data_folder"], str)
    assert build_options({"path": {"teacher": None}})["path"]["teacher"] is None
    with pytest.raises(OptionsError, match="'data_folder' must be a path"):
        build_options({"data_folder": 3})


PUBLISHED_RUN = """student_model: resnet20
epochs: 240
trial: 3
path:
  resume: null
  teacher: ./t_model/resnet56/ckpt_epoch_240.pth
  exp_root: experiments/S_resnet20_T_resnet56_cifar100_cocord/trial_3
  log: experiments/S_resnet20_T_resnet56_cifar100_cocord/trial_3/log
  model: experiments/S_resnet20_T_resnet56_cifar100_cocord/trial_3/model
  state: experiments/S_resnet20_T_resnet56_cifar100_cocord/trial_3/state
cocord:
  T: 0.1
"""


def test_published_run_options_load_with_one_note(tmp_path):
    path = tmp_path / "options.yml"
    path.write_text(PUBLISHED_RUN)
    given = read_options_file(path)
    notes: list[str] = []
    opt = build_options(given, partial=True, notes=notes)
    assert notes == ["ignored keys the published code derives: " + ", ".join(DERIVED)]
    assert opt["path"] == defaults(COMMON)["path"] and "trial" not in opt
    assert build_run_options(given)["cocord"]["T"] == 0.1  # the full check drops them too, silently
    assert given["trial"] == 3 and "exp_root" in given["path"]  # the caller's mapping is left alone
    notes.clear()
    build_options({"epochs": 3}, notes=notes)
    assert notes == []
    with pytest.raises(OptionsError, match="unknown option 'trial'"):  # on the command line it is -t
        build_options({}, ["trial=3"])


def test_published_trial_flag():
    assert main.parse_args(["-opt", "x.yml", "-trial", "3"]).trials == [3]
    assert main.parse_args(["-opt", "x.yml", "-t", "4"]).trials == [4]
    assert main.parse_args(["-opt", "x.yml", "--trial", "5"]).trials == [5]
    assert main.parse_args(["-opt", "x.yml"]).trials == [1]


@pytest.mark.parametrize("text", ["\uff11", "+1", "1_0", " 1", "1-\uff12", "1-+2", "0", "3-1", "1,1", "1-2-3", "65537"])
def test_trial_list_takes_plain_digits_only(text, capsys):
    """-t takes ASCII digits: int() alone would read a full-width 1, +1 and 1_0 as trial numbers. A bad list is
    one line and exit status 2, like any bad input."""
    with pytest.raises(SystemExit) as stop:
        main.parse_args(["-opt", "x.yml", "-t", text])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is not a trial list" in lines[0], lines
    assert main.parse_args(["-opt", "x.yml", "-t", "1-3,07"]).trials == [1, 2, 3, 7]


# End to end: the real main.py. These fail before torch is imported, so each takes well under a second.
E2E = {
    "alias bomb": (BOMB, [], "expands to more than"),
    "alias bomb in --set": ("epochs: 3\n", ["--set", f"lr_decay_epochs={FLOW_BOMB}"], "expands to more than"),
    "latin-1": ("data_folder: ./données\n".encode("latin-1"), [], "is not UTF-8 text"),
    "UTF-16": ("epochs: 3\n".encode("utf-16"), [], "is not UTF-8 text"),
    "deep": ("x: " + "[" * 500 + "]" * 500, [], "nests deeper than"),
    "duplicate key": ("epochs: 3\nepochs: 4\n", [], "'epochs' twice (lines 1 and 2)"),
    "not a mapping": ("false\n", [], "must hold key: value lines"),
    "empty": ("", [], "is empty"),
    "seed too large": ("seed: 4294967295\n", [], "'seed' must be in [0, 4294901760)"),
    "override twice": ("epochs: 3\n", ["--set", "epochs=3", "--set", "epochs=4"], "'epochs' is given twice"),
    "directory": (None, [], "is a directory; give an options file such as options/train_student.yml"),
    "named pipe": ("fifo", [], "is not a regular file"),
}


@pytest.mark.parametrize("case", list(E2E))
def test_main_refuses_with_one_line(tmp_path, case):
    content, args, words = E2E[case]
    opt = tmp_path / "opt.yml"
    if content is None:
        opt.mkdir()
    elif content == "fifo":
        os.mkfifo(opt)  # opening it would wait for a writer forever
    else:
        opt.write_bytes(content if isinstance(content, bytes) else content.encode())
    done = run_main(["-opt", str(opt), *args], tmp_path, timeout=30)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[:2000]
    assert lines[0].startswith("error: ") and words in lines[0] and len(lines[0]) < 300, lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.yml"]  # nothing written


def test_main_notes_published_keys_once(tmp_path):
    opt = tmp_path / "options.yml"
    opt.write_text(PUBLISHED_RUN.replace("./t_model/resnet56", "~/no_such_teacher"))
    done = run_main(["-opt", str(opt), "-trial", "3", "--set", "gpu=null"], tmp_path, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert lines[0] == "note: ignored keys the published code derives: " + ", ".join(DERIVED)
    assert len(lines) == 2 and lines[1].startswith("error: ") and os.path.expanduser("~/no_such_teacher") in lines[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["options.yml"]


def test_the_published_default_trial_0_is_explained(capsys):
    """The published code's default trial is 0; here trials count from 1, and the refusal says which is which."""
    with pytest.raises(SystemExit) as caught:
        main.parse_args(["-opt", "x.yml", "-t", "0"])
    assert caught.value.code == 2
    assert "published code's trial 0 (its default) is -t 1" in capsys.readouterr().err
