"""Entry point: `python main.py -opt options/train_student.yml -t 1 [--set key=value ...] [--resume]`.

Parses the command line and hands over to engine.run. Any problem with the user's input (options,
teacher, data, resume target) ends with one line on stderr and exit status 2, before anything is written.
"""
import argparse
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CoCoRD distillation (and plain training) on CIFAR-100.")
    parser.add_argument("-opt", required=True, metavar="FILE", help="YAML options file, e.g. options/train_student.yml")
    parser.add_argument("-t", "-trial", "--trial", type=int, default=1,  # -trial: the published code's spelling
                        help="trial number: the run goes to .../trial_T")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override options, e.g. --set cocord.T=0.07 epochs=10 (recorded in options.yml)")
    parser.add_argument("--resume", action="store_true",
                        help="continue this options/trial's run from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="print errors only")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from options.schema import OptionsError, build_options, read_options_file
    notes: list[str] = []  # collected here only, so each is printed once (engine.config passes none)
    try:  # before importing torch: a typo in the common options is reported at once
        given = read_options_file(args.opt)
        build_options(given, args.overrides, partial=True, notes=notes)
    except OptionsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    from engine.config import build_options as build_run_options
    from engine.run import USER_ERRORS, TrainingDiverged, run
    try:
        opt = build_run_options(given, args.overrides)
        run(opt, args.trial, args.resume, quiet=args.quiet)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume (the last finished epoch is saved)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
