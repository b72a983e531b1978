"""Entry point: `python main.py -opt options/train_student.yml -t 1 [--set key=value ...] [--resume]`.

Parses the command line and hands over to engine.run. Any problem with the user's input (options, teacher,
data, trial folders, resume target) ends with one line on stderr and exit status 2, before anything is written.
"""
import argparse
import os
import re
import sys
from typing import NoReturn

_TRIAL_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?")  # ASCII digits only: int() would also take "１", "+1", "1_0"


def parse_trials(text: str) -> list[int]:
    """`3`, `1-5` or `1,2,4` -> trial numbers, each at least 1."""
    numbers: list[int] = []
    for part in text.split(","):
        match = _TRIAL_RANGE.fullmatch(part)
        lo, hi = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
        if not 1 <= lo <= hi <= 2**16:
            numbers = []
            break
        numbers += range(lo, hi + 1)
    if text == "0":  # the published code's default trial
        raise argparse.ArgumentTypeError("'0' is not a trial list: trials are numbered from 1 here; the published "
                                         "code's trial 0 (its default) is -t 1, with the options' seed as it had")
    if not numbers or len(set(numbers)) != len(numbers):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a trial list: give a number (3), a range (1-5) or a "
                                         "list (1,2,4) of distinct trials from 1 to 65536, in plain digits")
    return sorted(numbers)


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # bad input like any other: one line, exit status 2
        self.exit(2, f"error: {message} (python main.py -h lists the arguments)\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _OneLineParser(description="CoCoRD distillation (and plain training) on CIFAR-100.")
    parser.add_argument("-opt", required=True, metavar="FILE", help="YAML options file, e.g. options/train_student.yml")
    parser.add_argument("-t", "--trial", "-trial", dest="trials", type=parse_trials, default=[1], metavar="TRIALS",
                        help="trial number(s): 1, a range 1-5 or a list 1,3; several train together on one device, "
                             "each in its own .../trial_N folder")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override options, e.g. --set cocord.T=0.07 epochs=10 (recorded in options.yml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue this options/trial's run from its last checkpoint, with the run's options")
    parser.add_argument("--replace", action="store_true",
                        help="archive (rename, not delete) a trial folder that holds a run with other settings")
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    first_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0
    from options.method_keys import method_key_names
    from options.schema import OptionsError, build_options, read_options_file
    notes: list[str] = []  # collected here only, so each is printed once
    deferred: dict = {}  # the keys only the methods know, validated once they are imported
    replaced: dict = {}  # what the file said where --set changed it (a resume may find its run by it)
    try:  # before importing torch: a typo in the common options is reported at once
        common = build_options(read_options_file(args.opt), args.overrides, partial=method_key_names() or True,
                               notes=notes, deferred=deferred, replaced=replaced)
    except OptionsError as err:
        if first_process:  # every torchrun process reads the same file: one says it
            print(f"error: {err}", file=sys.stderr)
        return 2
    notes = [f"note: {note}" for note in notes]
    if not args.quiet and first_process:
        for note in notes:
            print(note, file=sys.stderr)
    from distiller import complete_options
    from engine.plan import Command
    from engine.run import USER_ERRORS, Interrupted, run
    from engine.trainer import TrainingDiverged
    from utils.distributed import StoppedElsewhere, settle
    cmd = Command(args.trials, args.overrides, args.resume, args.replace, args.quiet, argv, notes, replaced)
    try:
        run(complete_options(common, deferred, args.overrides), cmd)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        settle(err)
        return 2
    except StoppedElsewhere as err:  # under torchrun: the process that stopped the run says why
        settle(err)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"\n{err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the run had anything to say
        print("\ninterrupted before training started: nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
