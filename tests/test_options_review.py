"""Options as a demanding user writes them: odd but legal YAML, --set forms, and the folder names they give.
Cheap: build_options in-process; the one main.py run fails before torch is imported."""
import pytest
from helpers import run_main

from distiller import build_options, method_class
from options.schema import OptionsError, read_options_file


def folder(overrides=(), given=None):
    opt = build_options({"teacher_model": "resnet56", **(given or {})}, list(overrides))
    return method_class(opt["distill"]).folder_name(opt)


@pytest.mark.parametrize("override", ['experiment_name="a\\0b"', 'experiments_dir="e\\0x"', 'data_folder="d\\0"',
                                      'path.teacher="t\\0.pth"', 'student_model="resnet\\0"'])
def test_a_nul_character_is_refused(override):
    """os.stat raised a ValueError (a traceback, exit status 1) for a NUL in experiment_name or experiments_dir;
    elsewhere the message showed the path cut at the NUL."""
    with pytest.raises(OptionsError, match="NUL"):
        build_options({}, [override])


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "a\x1bb", "a\x7fb"])
def test_experiment_name_takes_no_control_characters(name):
    """A newline or escape in a folder name breaks every line that shows it (the resume command included)."""
    with pytest.raises(OptionsError, match="experiment_name"):
        build_options({"experiment_name": name})


def test_an_unusual_but_printable_experiment_name_is_kept():
    assert folder(["experiment_name=run 3 (α=0.5)"]) == "run 3 (α=0.5)"
    assert folder(["experiment_name=.hidden"]) == ".hidden"


@pytest.mark.slow
def test_main_refuses_a_nul_in_the_folder_with_one_line(tmp_path):
    opt = tmp_path / "opt.yml"
    opt.write_text('experiment_name: "a\\0b"\n')
    done = run_main(["-opt", str(opt)], tmp_path, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "experiment_name" in lines[0] and "NUL" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.yml"]


@pytest.mark.parametrize("override,words", [
    ("epochs=010", ["010", "octal", "8"]), ("batch_size=064", ["064", "octal", "52"]),
    ("lr_decay_epochs=[100, 0150]", ["0150", "octal", "104"]),
    ("epochs=1:30", ["1:30", "base 60", "90"]), ("cocord.T=1:0.5", ["1:0.5", "base 60"]),
])
def test_yaml_11_octal_and_base_60_numbers_are_refused(override, words):
    """YAML 1.1 reads 010 as 8 and 1:30 as 90: `--set epochs=010` trained 8 epochs, `epochs: 4:00` meant 240."""
    with pytest.raises(OptionsError) as caught:
        build_options({}, [override])
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_octal_in_a_file_is_refused_with_its_line(tmp_path):
    path = tmp_path / "opt.yml"
    path.write_text("seed: 1\nepochs: 4:00\n")
    with pytest.raises(OptionsError, match="line 2"):
        read_options_file(path)


def test_numbers_that_read_the_same_either_way_are_kept():
    opt = build_options({}, ["epochs=07", "seed=0", "batch_size=0x40", "cocord.key_size=2_048", "cocord.T=0.10"])
    assert (opt["epochs"], opt["seed"], opt["batch_size"], opt["cocord"]["key_size"]) == (7, 0, 64, 2048)
    assert build_options({}, ["lr_decay_epochs=[01, 2]"])["lr_decay_epochs"] == [1, 2]
    assert build_options({}, ['experiment_name="010"'])["experiment_name"] == "010"


@pytest.mark.parametrize("override,key,value", [
    ("experiment_name=#3", "experiment_name", "#3"),  # was null: the run went to the default folder
    ("experiment_name=run #3", "experiment_name", "run #3"),  # was 'run'
    ("path.teacher=t #2.pth", "path.teacher", "t #2.pth"),
    ('experiment_name="#3"', "experiment_name", "#3"), ("experiment_name=run#3", "experiment_name", "run#3"),
])
def test_a_set_value_is_never_cut_at_a_yaml_comment(override, key, value):
    """On a command line ' #' is never a comment: a value holding one is the text itself, as one that is not YAML."""
    opt = build_options({}, [override])
    assert (opt[key] if "." not in key else opt["path"]["teacher"]) == value


@pytest.mark.parametrize("override,words", [("epochs=3 # was 2", "must be an integer, got '3 # was 2'"),
                                            ("cocord.T=#0.2", "must be a number, got '#0.2'")])
def test_a_number_followed_by_a_comment_is_refused(override, words):
    """`cocord.T=#0.2` was null for a key that takes none, and `epochs=3 # was 2` was 3."""
    with pytest.raises(OptionsError, match=words):
        build_options({}, [override])


def test_minus_zero_names_the_folder_zero_does():
    """-0.0 is 0.0 (the same settings): `loss_ctr=-0.0` made '..._ctr-0.0cls...', a second folder for one run."""
    assert folder(["loss_ctr=-0.0"]) == folder(["loss_ctr=0"]) == \
        "S_resnet20_T_resnet56_cifar100_cocord_ctr0.0cls1.0p4.0"
    assert folder(["distill=kd", "loss_kd=1", "loss_cls=-0.0"]) == folder(["distill=kd", "loss_kd=1", "loss_cls=0.0"])


@pytest.mark.parametrize("override", ["cocord.embedding_dim=100000000000000000000000", "epochs=9223372036854775808",
                                      "lr_decay_epochs=[1, 9223372036854775808]",
                                      "cocord.hidden_dim=18446744073709551616"])
def test_an_integer_beyond_64_bits_is_refused(override):
    """torch holds sizes in 64 bits: cocord.embedding_dim=10**23 passed every check and raised 'Overflow when
    unpacking long' from nn.Linear, a traceback with exit status 1."""
    with pytest.raises(OptionsError, match="64-bit"):
        build_options({}, [override])
    assert build_options({}, ["epochs=9223372036854775807"])["epochs"] == 2**63 - 1


@pytest.mark.parametrize("override", ['experiments_dir="e\\ud800"', 'path.resume="r\\udfff"'])
def test_a_lone_surrogate_is_refused(override):
    """YAML's "\\ud800" makes a character no file name can hold: os.stat raised UnicodeEncodeError (a traceback)."""
    with pytest.raises(OptionsError, match="file name can hold"):
        build_options({}, [override])


def test_bytes_a_command_line_could_not_decode_stay_a_path():
    """A non-UTF-8 byte in argv arrives as a surrogate escape (\\udce9 for 0xe9): it names the same file."""
    assert build_options({}, ["data_folder=d\udce9"])["data_folder"] == "d\udce9"


@pytest.mark.parametrize("reader", ["cifar", "imagenet", "checkpoint"])
def test_a_path_with_a_name_too_long_is_not_found_in_one_line(tmp_path, reader):
    """Python 3.11's Path.exists and is_dir raise ENAMETOOLONG: main.py and evaluate.py crashed with a traceback on a
    data_folder or checkpoint path holding a 300-byte name. The readers now find nothing there, as for a missing
    path (main.py and evaluate.py turn these errors into one line, exit status 2)."""
    from dataset import DataError, build_imagenet_loaders, load_cifar100
    from models import CheckpointError, read_state_dict
    long = tmp_path / ("x" * 300)
    read, error, words = {
        "cifar": (lambda: load_cifar100(str(long), download=False), DataError, "CIFAR-100 not found"),
        "imagenet": (lambda: build_imagenet_loaders(str(long), 4, 1, 0, False), DataError, "ImageNet folder not found"),
        "checkpoint": (lambda: read_state_dict(long / "a.pth"), CheckpointError, "does not exist")}[reader]
    with pytest.raises(error, match=words):
        read()
    assert list(tmp_path.iterdir()) == []


def test_a_size_too_large_for_any_tensor_is_refused():
    """hidden_dim=2**62 passes the 64-bit check but no tensor of it can exist: the memory check's build on the meta
    device raised 'Storage size calculation overflowed' (a traceback) before it could compare with memory."""
    import torch

    from engine.machine import check_memory
    opt = build_options({"teacher_model": "resnet56"}, ["cocord.hidden_dim=4611686018427387904"])
    with pytest.raises(OptionsError, match="too large to exist"):
        check_memory(method_class("cocord"), opt, "resnet56", 1, torch.device("cpu"))
