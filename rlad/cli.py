"""The ``rlad`` command line.

rlad config [CONFIG] [key=value ...]      print the resolved config (schema + file + overrides)
rlad rewards                              list the registered rewards and their parameters
rlad score COMPLETIONS.jsonl [--config C] [key=value ...] [--out SCORES.jsonl]
                                          verify stored completions: rewards and metrics, per group
rlad rescore RUN_DIR [--config C] [key=value ...]
                                          re-score a run's replay store under another mix, per step
rlad sft CONFIG [key=value ...]           stage 1: SFT warm-start; writes <sft.output_dir>/final
rlad [-v] train [CONFIG] [key=value ...] [resume=RUN_DIR] [--ray-address ADDR]
                                          SFT warm-start + GRPO on Ray + held-out evaluation
rlad eval CHECKPOINT DATA [--shots 0|1] [--out DIR] [key=value ...]
                                          metrics, paper-shaped tables and overlays of a policy on a dataset
rlad export RUN_DIR|CHECKPOINT --out DIR  a plain Hugging Face folder for serving, with a model card
rlad predict CHECKPOINT IMAGE [--question Q] [--reference IMG]
                                          answer one question about one image; mask grid and overlay PNG
rlad demo [--config C] [--out DIR] [key=value ...]
                                          the main job: benchmark + checks, then rlad train into DIR/<time>
                                          (DIR/latest links to it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlad import console
from rlad.config import ConfigError, load_config, to_yaml
from rlad.data.readers import DataError
from rlad.faults import LearnerLostError, NonFiniteError
from rlad.ray_session import RayConnectError
from rlad.run_dir import RunFolderBusyError
from rlad.scoring import CompletionFileError, print_summary


def _config_or_override(args: argparse.Namespace) -> None:
    """``rlad config grpo.steps=3`` / ``rlad train resume=RUN``: a first word with ``=`` that is no file is an
    override (argparse cannot tell the optional CONFIG from the first override)."""
    if args.config and "=" in args.config and not Path(args.config).is_file():
        args.overrides, args.config = [args.config, *args.overrides], None


def _cmd_config(args: argparse.Namespace) -> None:
    _config_or_override(args)
    print(to_yaml(load_config(args.config, args.overrides)), end="")


def _cmd_rewards(args: argparse.Namespace) -> None:
    from rewards import broken_plugins, get_reward, known_rewards

    for name in known_rewards():
        r = get_reward(name)
        params = ", ".join(f"{k}={v!r}" for k, v in r.params.items()) or "-"
        doc = (r.fn.__doc__ or "").strip().splitlines()[0] if r.fn.__doc__ else ""
        print(f"{name:<12} {'batched ' if r.batched else ''}params: {params}\n{'':<12} {doc}")
    for plugin, error in broken_plugins().items():
        print(f"plugin {plugin} did not load: {error}")


def _cmd_score(args: argparse.Namespace) -> None:
    from rewards import RewardMix
    from rlad.scoring import read_completions, score_records, summarise

    config = load_config(args.config, args.overrides)
    records = list(read_completions(args.completions))
    if not records:
        raise SystemExit(f"rlad score: {args.completions} holds no completions")
    scores = score_records(records, RewardMix(config.rewards))
    if args.out:
        from rlad.rescore import write_rows

        rows = [{"sample_id": r.sample.sample_id, "group": r.group, **s} for r, s in zip(records, scores, strict=True)]
        write_rows(rows, args.out)
    print_summary(summarise(records, scores))


def _cmd_demo(args: argparse.Namespace) -> None:
    """The main job: the benchmark and its scoring checks, then ``rlad train`` into ``<out>/<time>/``, with
    ``<out>/latest`` pointing at it (the README's commands name that link)."""
    import time

    from rlad.demo import run_demo
    from rlad.train import run_train

    out = Path(args.out)
    config = load_config(args.config, args.overrides)
    run_demo(out, config)
    if args.no_train:
        return
    run_dir = out / time.strftime("%Y%m%d-%H%M%S")
    latest = out / "latest"
    config = load_config(args.config, [*args.overrides, f"train.run_dir={run_dir}"])
    print(f"rlad train {args.config or ''} train.run_dir={run_dir} (also {latest})", flush=True)
    run_dir.mkdir(parents=True, exist_ok=False)
    tmp = out / "latest.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)  # relative: the folder can move
    tmp.replace(latest)
    _print_train_report(run_train(config))


def _print_train_report(report: dict) -> None:
    rows = {k: v for k, v in report["rows"].items() if v}
    if rows:
        print(f"held-out questions: {int(next(iter(rows.values()))['n'])} (greedy)")
        print_summary(rows)
    run = report["run_dir"]
    print(
        f"run folder {run}: policy {report['final']}, TensorBoard {run}/tensorboard, replay store {run}/replay, "
        f"metrics {run}/metrics.jsonl, report {run}/report.json"
    )


def _cmd_rescore(args: argparse.Namespace) -> None:
    from rewards import RewardMix
    from rlad.replay import ReplayStore, completions_of
    from rlad.rescore import compare_mixes, mix_signal, per_completion_rows, signal_scores, stored_signal, write_rows
    from rlad.run_dir import SNAPSHOT_NAME
    from rlad.scoring import summarise
    from rlad.tables import text_table

    run = Path(args.run)
    folder = run / "replay" if (run / "replay").is_dir() else run
    if not folder.is_dir():
        raise FileNotFoundError(f"{args.run}: no replay store (expected a run folder holding replay/)")
    groups = ReplayStore(folder).groups()
    if not groups:
        raise SystemExit(f"rlad rescore: {folder} holds no completions")
    snapshot = folder.parent / SNAPSHOT_NAME
    own = str(snapshot) if snapshot.is_file() else None
    if own is None:
        print(f"note: {folder.parent} has no {SNAPSHOT_NAME}; the run's own mix is unknown, the schema's default "
              "stands in for it", file=sys.stderr)  # fmt: skip
    run_config = load_config(own, [])
    mixes = {"run's mix" if own else "default mix": run_config}
    if args.config or args.overrides:  # the per-step table's mix: --config and key=value words on the run's config
        mixes["this mix"] = load_config(args.config or own, args.overrides)
    for spec in args.mix or []:
        name, cfg = _mix_of(spec, own)
        mixes[name] = cfg
    scale = run_config.grpo.advantage_scale
    baseline = stored_signal(groups)
    signals = [baseline, *(mix_signal(n, groups, RewardMix(c.rewards), scale) for n, c in mixes.items())]

    records = completions_of(groups)
    per_step = signals[2] if args.config or args.overrides else signals[1]
    print(f"{len(records)} completions of {len(groups)} groups, steps {groups[0].step}-{groups[-1].step}, from "
          f"{folder}; mix: {args.config or own or 'schema defaults'} {' '.join(args.overrides)}".rstrip())  # fmt: skip
    print_summary(summarise(records, signal_scores(per_step)))
    rows = compare_mixes(signals, baseline)
    columns = list(rows[0])
    print(f"\nthe mixes side by side (stored: what the run trained on; advantages by {scale}, compared with the "
          "stored ones)")  # fmt: skip
    print(text_table(["mix", *columns], [[s.name, *(_cell(r[c]) for c in columns)] for s, r in
                                          zip(signals, rows, strict=True)]), end="")  # fmt: skip
    if args.out:
        out = write_rows(list(per_completion_rows(groups, signals)), args.out)
        print(f"per-completion table: {out}")


def _cell(x: float) -> str:
    return "—" if x != x else f"{x:.3f}"  # NaN: a reward the mix does not name, a constant ranking


def _mix_of(spec: str, own: str | None) -> tuple[str, object]:
    """``--mix``: ``[NAME:] [FILE.yaml] [key=value ...]``; the file (else the run's own config) with the
    overrides on top. Without a name the mix is named by what it says."""
    name, _, rest = spec.partition(":") if ":" in spec.split("=", 1)[0] else ("", "", spec)
    words = rest.split()
    files = [w for w in words if "=" not in w]
    if len(files) > 1:
        raise ConfigError(f"--mix {spec!r}: one config file at most, got {files}")
    overrides = [w for w in words if "=" in w]
    default = " ".join([Path(files[0]).stem, *overrides] if files else overrides)  # a file by its stem
    return (name.strip() or default or spec), load_config(files[0] if files else own, overrides)


def _cmd_sft(args: argparse.Namespace) -> None:
    from rlad.base_stage import with_base_stage
    from rlad.sft import run_sft

    report = run_sft(with_base_stage(load_config(args.config, args.overrides)))
    rows = report["rows"]
    if rows:
        print(f"held-out questions: {report['held_out']} (greedy); training examples: {report['train_examples']}")
        print_summary(rows)
    print(f"{report['train']['steps']} steps in {report['train']['seconds']} s; policy saved to {report['final']}")


def _cmd_train(args: argparse.Namespace) -> None:

    from rlad.run_dir import resume_config
    from rlad.train import run_train

    _config_or_override(args)  # `rlad train resume=RUN_DIR`
    overrides = [o for o in args.overrides if not o.startswith("resume=")]
    resume = [o.split("=", 1)[1] for o in args.overrides if o.startswith("resume=")]
    config = resume_config(resume[-1], args.config, overrides) if resume else load_config(args.config, overrides)
    _print_train_report(run_train(config, resume=bool(resume), ray_address=args.ray_address))


def _cmd_eval(args: argparse.Namespace) -> None:
    from rlad.evaluate import run_eval
    from rlad.policy import policy_config, resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    overrides = list(args.overrides) + ([f"data.shots={args.shots}"] if args.shots is not None else [])
    config = policy_config(checkpoint, args.config, overrides)
    data_name = "held-out" if args.data == "held-out" else Path(args.data).stem
    out = Path(args.out or Path("runs/eval") / f"{checkpoint.parent.name}-{checkpoint.name}-{data_name}")
    result = run_eval(
        checkpoint, args.data, out, config, fmt=args.format, limit=args.limit or 0, overlays=args.overlays
    )
    print((out / "eval.md").read_text())
    took = result["seconds"]
    print(f"{result['questions']} questions in {took['generate']} s of generation; "
          f"results in {out}/eval.json, eval.md, completions.jsonl, overlays/")  # fmt: skip


def _cmd_export(args: argparse.Namespace) -> None:
    from rlad.export import export_policy

    out = export_policy(args.source, args.out, step=args.step, overwrite=args.overwrite, evals=args.eval or [])
    print(f"exported to {out}: safetensors weights, tokenizer, image processor, chat template, generation "
          f"config, model card (README.md). Serve on a GPU with: vllm serve {out}")  # fmt: skip


def _cmd_predict(args: argparse.Namespace) -> None:
    from rlad.data.show import grid_text
    from rlad.policy import policy_config, resolve_checkpoint
    from rlad.predict import predict

    checkpoint = resolve_checkpoint(args.checkpoint)
    config = policy_config(checkpoint, None, args.overrides)
    question = args.question.replace("\\n", "\n") if args.question else None
    out = Path(args.out or f"{Path(args.image).stem}-prediction.png")
    result = predict(checkpoint, args.image, config, question, args.reference, overlay=out)
    parsed, sample = result["parsed"], result["sample"]
    for note in result["notes"]:
        print(f"note: {note}")
    letter = parsed.answer_letter
    print(f"completion: {result['completion']}\n")
    print(f"answer: {letter or '(none)'} {sample.options.get(letter, '') if letter else ''}".rstrip())
    if "seg" in config.output.blocks:
        n = result["patches"]
        print(f"anomalous patches ({config.mask.grid}x{config.mask.grid}): "
              f"{'unparseable' if n is None else int(n.sum())}\n{grid_text(n)}")  # fmt: skip
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"overlay: {out}")


def _cmd_data_synth(args: argparse.Namespace) -> None:
    import time

    from rlad.data.synth import SynthSpec, synthesize

    classes = tuple(args.classes.split(",")) if args.classes else SynthSpec.classes
    spec = SynthSpec(
        classes=classes,
        images_per_class=args.per_class,
        references_per_class=args.references,
        size=args.size,
        seed=args.seed,
        fixed_options=args.fixed_options,
        visibility=args.visibility,
    )
    start = time.perf_counter()
    mmad = synthesize(spec, args.out, workers=args.workers)
    n_q = sum(len(e["conversation"]) for e in mmad.values())
    print(
        f"wrote {len(mmad)} test images, {len(classes) * args.references} references and {n_q} questions "
        f"to {args.out} in {time.perf_counter() - start:.1f} s (MVTec-AD layout + mmad.json)"
    )


def _cmd_data_show(args: argparse.Namespace) -> None:
    import numpy as np

    from rlad.data.readers import load_pixel_mask, read_mvtec
    from rlad.data.show import contact_sheet

    config = load_config(args.config, args.overrides)
    samples, _ = read_mvtec(args.data, config.mask.grid, config.mask.cover, config.mask.tau)
    rng = np.random.default_rng(config.seed)
    anomalous = [s for s in samples if s.anomalous]
    normal = [s for s in samples if not s.anomalous]
    n_ano = min(len(anomalous), args.n - args.n // 6)
    pick = [anomalous[i] for i in rng.permutation(len(anomalous))[:n_ano]]
    pick += [normal[i] for i in rng.permutation(len(normal))[: args.n - n_ano]]
    out = contact_sheet(pick, [load_pixel_mask(s) for s in pick], args.out)
    print(f"contact sheet of {len(pick)} samples ({config.mask.grid}x{config.mask.grid} grid): {out}")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (where it has one worth showing) and keeps the examples' lines."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
        return f"{text} (default: %(default)s)" if shown and "default" not in text else text


def _command(parent, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` says what it does, shows the defaults and ends with an example."""
    epilog = "example:\n" + "\n".join(f"  {line}" for line in example.splitlines()) if example else None
    p = parent.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=_HelpFormatter)
    return p


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of questions, got {n} (leave it out for all)")
    return n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlad", description="Reinforcement fine-tuning of VLMs for anomaly detection")
    quiet = "default: a progress bar and one line per stage"
    parser.add_argument("-v", "--verbose", action="store_true", help=f"print all the libraries and Ray say ({quiet})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(
        sub,
        "config",
        "print the resolved config",
        "rlad config configs/demo.yaml grpo.steps=80\nrlad config grpo.group_size=4",
    )
    p.add_argument("config", nargs="?", help="YAML config file (default: schema defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="key=value overrides")
    p.set_defaults(fn=_cmd_config)

    p = _command(sub, "rewards", "list registered rewards", "rlad rewards")
    p.set_defaults(fn=_cmd_rewards)

    p = _command(
        sub,
        "score",
        "score stored completions (JSONL) with the config's reward mix",
        "rlad score runs/demo/latest/eval/grpo.jsonl rewards.answer.weight=0 --out scores.jsonl",
    )
    p.add_argument("completions", help="JSONL of {completion, sample, group?}")
    p.add_argument("--config", help="YAML config whose `rewards` section is the mix")
    p.add_argument("--out", help="write per-completion scores to this JSONL")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="key=value overrides, e.g. rewards.answer.weight=0"
    )
    p.set_defaults(fn=_cmd_score)

    p = _command(
        sub,
        "eval",
        "evaluate a checkpoint on a dataset: JSON, Markdown tables, PNG overlays",
        "rlad eval runs/demo/latest held-out --limit 64 --out runs/eval/demo",
    )
    p.add_argument("checkpoint", help="a checkpoint folder, or a run / SFT folder (its final/)")
    p.add_argument("data", help="a dataset folder or mmad.json (MMAD, MVTec-AD, VisA, MVTec-LOCO, generated), "
                                "or 'held-out': the held-out split of the checkpoint's own training data")  # fmt: skip
    p.add_argument("--shots", type=int, choices=(0, 1), default=None, help="default: the checkpoint's training value")
    p.add_argument("--out", help="output folder (default runs/eval/<checkpoint>-<data>)")
    p.add_argument("--format", default="auto", choices=("auto", "mmad", "mvtec", "visa", "loco"),
                   help="the dataset's layout; auto: told by its files")  # fmt: skip
    p.add_argument("--limit", type=_positive, default=None,
                   help="score a seeded subset of this many questions (default: all of them)")  # fmt: skip
    p.add_argument("--overlays", type=int, default=12, help="PNG overlays written, half hits, half misses")
    p.add_argument("--config", help="a config to use instead of the checkpoint's rlad.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="key=value overrides, e.g. rollout.batch_size=32")
    p.set_defaults(fn=_cmd_eval)

    p = _command(
        sub,
        "export",
        "a plain Hugging Face folder for serving (safetensors, template, card)",
        "rlad export runs/demo/latest --out served/rlad-tiny --eval runs/eval/demo",
    )
    p.add_argument("source", help="a run folder (rlad train / rlad sft), a checkpoint or a LoRA adapter folder")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--step", type=int, help="export the run's checkpoint of this step instead of its final policy")
    p.add_argument("--eval", action="append", help="an rlad eval output folder whose numbers go in the model card")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(fn=_cmd_export)

    p = _command(
        sub,
        "predict",
        "answer one question about one image; mask grid and overlay PNG",
        "rlad predict served/rlad-tiny part.png --reference normal_part.png",
    )
    p.add_argument("checkpoint", help="an exported or trained policy folder, or a run folder")
    p.add_argument("image")
    p.add_argument("--question", help="the question with its options on their own lines (\\n allowed); "
                                      "default: is there any defect? A. Yes B. No")  # fmt: skip
    p.add_argument("--reference", help="a normal image of the same part (1-shot prompt)")
    p.add_argument("--out", help="overlay PNG (default: <image>-prediction.png here)")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="key=value overrides, e.g. generation.max_new_tokens=512"
    )
    p.set_defaults(fn=_cmd_predict)

    data = _command(sub, "data", "generate or inspect datasets", "").add_subparsers(dest="data_command", required=True)
    p = _command(
        data,
        "synth",
        "write the generated benchmark (MVTec-AD layout + mmad.json)",
        "rlad data synth --out data/synth --per-class 100 --classes pill,screw",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", default="", help="comma-separated subset of the classes (default: all 8)")
    p.add_argument("--per-class", type=int, default=40, help="test images per class, half normal")
    p.add_argument("--references", type=int, default=4, help="normal train images per class (1-shot references)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--fixed-options", action="store_true", help="all options in a fixed order (not shuffled)")
    p.add_argument("--visibility", type=float, default=1.0, help="defect thickness x this (1.0: realistic, faint)")
    p.set_defaults(fn=_cmd_data_synth)
    p = _command(
        data,
        "show",
        "contact sheet PNG of a dataset in MVTec-AD layout",
        "rlad data show data/synth --out sheet.png --n 36",
    )
    p.add_argument("data", help="dataset root")
    p.add_argument("--out", default="contact_sheet.png")
    p.add_argument("--n", type=int, default=24, help="samples on the sheet")
    p.add_argument("--config", default=None, help="YAML config (its mask section sets the grid)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="key=value overrides")
    p.set_defaults(fn=_cmd_data_show)

    p = _command(
        sub,
        "rescore",
        "re-score a run's stored completions under other reward mixes, side by side",
        "rlad rescore runs/demo/latest --mix 'no-answer: rewards.answer.weight=0' --out rescored.csv",
    )
    p.add_argument("run", help="run folder (holding replay/) or a replay folder")
    p.add_argument("--config", help="YAML config whose `rewards` section is the mix of the per-step table "
                                    "(default: the run's own config.yaml)")  # fmt: skip
    p.add_argument("--mix", action="append", metavar="[NAME:] [FILE] [key=value ...]",
                   help="another mix to compare (repeatable): a config file and/or overrides on the run's own "
                        "config, e.g. --mix 'no-answer: rewards.answer.weight=0'")  # fmt: skip
    p.add_argument("--out", help="write the per-completion table (every mix's rewards and advantages) to this "
                                 ".csv or .jsonl")  # fmt: skip
    p.add_argument("overrides", nargs="*", metavar="key=value", help="key=value overrides of the per-step table's mix")
    p.set_defaults(fn=_cmd_rescore)

    p = _command(
        sub,
        "sft",
        "stage 1: SFT warm-start on dense <seg><think><answer> targets",
        "rlad sft configs/demo.yaml sft.epochs=1",
    )
    p.add_argument("config", help="YAML config (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="key=value overrides, e.g. sft.max_steps=50")
    p.set_defaults(fn=_cmd_sft)

    p = _command(
        sub,
        "train",
        "SFT warm-start, GRPO on Ray, held-out evaluation: the whole method",
        "rlad train configs/demo.yaml grpo.steps=100\nrlad train resume=runs/demo/latest",
    )
    p.add_argument("config", nargs="?", help="YAML config (e.g. configs/demo.yaml); optional with resume=RUN_DIR")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="key=value overrides; resume=RUN_DIR continues a run"
    )
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS, else local)")
    p.set_defaults(fn=_cmd_train)

    p = _command(
        sub, "demo", "run the main job on this machine: benchmark, checks, then rlad train", "rlad demo grpo.steps=80"
    )
    p.add_argument("--out", default="runs/demo", help="output folder; the run goes to OUT/<time>, linked as OUT/latest")
    p.add_argument("--no-train", action="store_true", help="only the benchmark and its scoring checks (seconds)")
    p.add_argument("--config", default=None, help="YAML config (default: configs/demo.yaml values)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="key=value overrides")
    p.set_defaults(fn=_cmd_demo)

    # Overrides may stand before or after options (`score f.jsonl --out s.jsonl k=v`): argparse's
    # positional list stops at the first option, so collect the key=value words it leaves over.
    args, extra = parser.parse_known_args(argv)
    if "-v" in extra or "--verbose" in extra:  # also accepted after the subcommand
        extra = [w for w in extra if w not in ("-v", "--verbose")]
        args.verbose = True
    console.setup(args.verbose or console.verbose())
    unknown = [w for w in extra if w.startswith("-") or "=" not in w or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.fn(args)
    except (
        ConfigError,
        CompletionFileError,
        DataError,
        FileNotFoundError,
        IsADirectoryError,
        LearnerLostError,
        NonFiniteError,
        RayConnectError,
        RunFolderBusyError,
    ) as err:
        # User mistakes (bad config, bad input file) end with the message that names them, not a traceback.
        print(f"rlad {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
