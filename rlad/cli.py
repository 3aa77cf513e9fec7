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
import json
import sys
from pathlib import Path

from rlad import console
from rlad.config import ConfigError, load_config, to_yaml
from rlad.data.readers import DataError
from rlad.faults import LearnerLostError, NonFiniteError
from rlad.ray_session import RayConnectError
from rlad.run_dir import RunFolderBusyError
from rlad.scoring import CompletionFileError, print_summary


def _cmd_config(args: argparse.Namespace) -> None:
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
        with Path(args.out).open("w") as f:
            for r, s in zip(records, scores, strict=True):
                f.write(json.dumps({"sample_id": r.sample.sample_id, "group": r.group, **s}) + "\n")
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
    from rlad.replay import ReplayStore, stored_completions
    from rlad.scoring import score_records, summarise

    folder = Path(args.run) / "replay" if (Path(args.run) / "replay").is_dir() else Path(args.run)
    if not folder.is_dir():
        raise FileNotFoundError(f"{args.run}: no replay store (expected a run folder holding replay/)")
    records = stored_completions(ReplayStore(folder))
    if not records:
        raise SystemExit(f"rlad rescore: {folder} holds no completions")
    config = load_config(args.config, args.overrides)
    print_summary(summarise(records, score_records(records, RewardMix(config.rewards))))


def _cmd_sft(args: argparse.Namespace) -> None:
    from rlad.sft import run_sft

    config = load_config(args.config, args.overrides)
    report = run_sft(config)
    rows = report["rows"]
    if rows:
        print(f"held-out questions: {report['held_out']} (greedy); training examples: {report['train_examples']}")
        print_summary(rows)
    print(f"{report['train']['steps']} steps in {report['train']['seconds']} s; policy saved to {report['final']}")


def _cmd_train(args: argparse.Namespace) -> None:

    from rlad.run_dir import resume_config
    from rlad.train import run_train

    if args.config and "=" in args.config and not Path(args.config).is_file():  # `rlad train resume=RUN_DIR`
        args.overrides, args.config = [args.config, *args.overrides], None
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
    result = run_eval(checkpoint, args.data, out, config, fmt=args.format, limit=args.limit, overlays=args.overlays)
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
    from rlad.data.show import grid_text, prediction_overlay
    from rlad.policy import policy_config, resolve_checkpoint
    from rlad.predict import predict

    checkpoint = resolve_checkpoint(args.checkpoint)
    config = policy_config(checkpoint, None, args.overrides)
    question = args.question.replace("\\n", "\n") if args.question else None
    result = predict(checkpoint, args.image, config, question, args.reference)
    parsed, sample = result["parsed"], result["sample"]
    letter = parsed.answer_letter
    print(f"completion: {result['completion']}\n")
    print(f"answer: {letter or '(none)'} {sample.options.get(letter, '') if letter else ''}".rstrip())
    if "seg" in config.output.blocks:
        n = result["patches"]
        print(f"anomalous patches ({config.mask.grid}x{config.mask.grid}): "
              f"{'unparseable' if n is None else int(n.sum())}\n{grid_text(n)}")  # fmt: skip
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    out = Path(args.out or f"{Path(args.image).stem}-prediction.png")
    prediction_overlay(sample, parsed, result["patches"], None, out, graded=False)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlad", description="Reinforcement fine-tuning of VLMs for anomaly detection")
    quiet = "default: a progress bar and one line per stage"
    parser.add_argument("-v", "--verbose", action="store_true", help=f"print all the libraries and Ray say ({quiet})")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="print the resolved config")
    p.add_argument("config", nargs="?", help="YAML config file (default: schema defaults)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(fn=_cmd_config)

    p = sub.add_parser("rewards", help="list registered rewards")
    p.set_defaults(fn=_cmd_rewards)

    p = sub.add_parser("score", help="score stored completions (JSONL) with the config's reward mix")
    p.add_argument("completions", help="JSONL of {completion, sample, group?}")
    p.add_argument("--config", help="YAML config whose `rewards` section is the mix")
    p.add_argument("--out", help="write per-completion scores to this JSONL")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rewards.answer.weight=0")
    p.set_defaults(fn=_cmd_score)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset: JSON, Markdown tables, PNG overlays")
    p.add_argument("checkpoint", help="a checkpoint folder, or a run / SFT folder (its final/)")
    p.add_argument("data", help="a dataset folder or mmad.json (MMAD, MVTec-AD, VisA, MVTec-LOCO, generated), "
                                "or 'held-out': the held-out split of the checkpoint's own training data")  # fmt: skip
    p.add_argument("--shots", type=int, choices=(0, 1), default=None, help="default: the checkpoint's training value")
    p.add_argument("--out", help="output folder (default runs/eval/<checkpoint>-<data>)")
    p.add_argument("--format", default="auto", choices=("auto", "mmad", "mvtec", "visa", "loco"))
    p.add_argument("--limit", type=int, default=0, help="score a seeded subset of this many questions")
    p.add_argument("--overlays", type=int, default=12, help="PNG overlays written, half hits, half misses")
    p.add_argument("--config", help="a config to use instead of the checkpoint's rlad.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rollout.batch_size=32")
    p.set_defaults(fn=_cmd_eval)

    p = sub.add_parser("export", help="a plain Hugging Face folder for serving (safetensors, template, card)")
    p.add_argument("source", help="a run folder (rlad train / rlad sft), a checkpoint or a LoRA adapter folder")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--step", type=int, help="export the run's checkpoint of this step instead of its final policy")
    p.add_argument("--eval", action="append", help="an rlad eval output folder whose numbers go in the model card")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(fn=_cmd_export)

    p = sub.add_parser("predict", help="answer one question about one image; mask grid and overlay PNG")
    p.add_argument("checkpoint", help="an exported or trained policy folder, or a run folder")
    p.add_argument("image")
    p.add_argument("--question", help="the question with its options on their own lines (\\n allowed); "
                                      "default: is there any defect? A. Yes B. No")  # fmt: skip
    p.add_argument("--reference", help="a normal image of the same part (1-shot prompt)")
    p.add_argument("--out", help="overlay PNG (default: <image>-prediction.png here)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. generation.max_new_tokens=512")
    p.set_defaults(fn=_cmd_predict)

    data = sub.add_parser("data", help="generate or inspect datasets").add_subparsers(
        dest="data_command", required=True
    )
    p = data.add_parser("synth", help="write the generated benchmark (MVTec-AD layout + mmad.json)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--classes", default="", help="comma-separated subset of the classes (default: all 8)")
    p.add_argument("--per-class", type=int, default=40, help="test images per class, half normal")
    p.add_argument("--references", type=int, default=4, help="normal train images per class (1-shot references)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--fixed-options", action="store_true", help="all options in a fixed order (not shuffled)")
    p.set_defaults(fn=_cmd_data_synth)
    p = data.add_parser("show", help="contact sheet PNG of a dataset in MVTec-AD layout")
    p.add_argument("data", help="dataset root")
    p.add_argument("--out", default="contact_sheet.png")
    p.add_argument("--n", type=int, default=24, help="samples on the sheet")
    p.add_argument("--config", default=None, help="YAML config (its mask section sets the grid)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(fn=_cmd_data_show)

    p = sub.add_parser("rescore", help="re-score a run's stored completions under another reward mix")
    p.add_argument("run", help="run folder (holding replay/) or a replay folder")
    p.add_argument("--config", help="YAML config whose `rewards` section is the new mix")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rewards.answer.weight=0")
    p.set_defaults(fn=_cmd_rescore)

    p = sub.add_parser("sft", help="stage 1: SFT warm-start on dense <seg><think><answer> targets")
    p.add_argument("config", help="YAML config (e.g. configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. sft.max_steps=50")
    p.set_defaults(fn=_cmd_sft)

    p = sub.add_parser("train", help="SFT warm-start, GRPO on Ray, held-out evaluation: the whole method")
    p.add_argument("config", nargs="?", help="YAML config (e.g. configs/demo.yaml); optional with resume=RUN_DIR")
    p.add_argument("overrides", nargs="*", help="key=value overrides; resume=RUN_DIR continues a run")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (default: RAY_ADDRESS, else local)")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("demo", help="run the main job on this machine: benchmark, checks, then rlad train")
    p.add_argument("--out", default="runs/demo", help="output folder; the run goes to OUT/<time>, linked as OUT/latest")
    p.add_argument("--no-train", action="store_true", help="only the benchmark and its scoring checks (seconds)")
    p.add_argument("--config", default=None, help="YAML config (default: configs/demo.yaml values)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
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
