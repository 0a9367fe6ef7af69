"""`fast-dvlm <command>`: a thin layer over the library. Errors the user can fix print one line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FastDVLMError
from .experiments.budget import DEFAULT_PER_TASK, DEFAULT_STEPS, MULTI_TURN_PER_TASK, SWEEP_PER_TASK
from .modes import DEFAULT_MODE, MODES, check_mode
from .quant.cli import add_quantize_parser
from .serve.command import add_serve_parser
from .settings import BLOCK_SIZE, SUB_BLOCK_SIZE, THRESHOLD

if TYPE_CHECKING:
    from .vlm import GenerationOutput

MODEL_HELP = (
    "checkpoint directory, demo or demo-ar (the shipped demo models), or tiny:FAMILY for a random tiny model"
)


def add_decoding_args(parser: argparse.ArgumentParser) -> None:
    """Checked by `main`, not by argparse: a bad mode gets one error line, not a usage dump."""
    parser.add_argument(
        "--mode",
        default=None,
        metavar="MODE",
        help=f"decoding algorithm: {', '.join(MODES)} (default: {DEFAULT_MODE})",
    )
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length cap (default: 128)")
    parser.add_argument(
        "--block-size", type=int, default=None, help=f"tokens per block (default: model's, {BLOCK_SIZE})"
    )
    parser.add_argument(
        "--sub-block-size", type=int, default=None, help=f"tokens per sub-block (default: {SUB_BLOCK_SIZE})"
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help=f"confidence threshold tau (default: {THRESHOLD})"
    )


def decoding_settings(args: argparse.Namespace) -> dict[str, int | float | None]:
    """The settings `add_decoding_args`' flags set, --mode apart: keyword arguments of `generate`
    (`fast-dvlm generate`) and of `chat` (`fast-dvlm chat`)."""
    return {
        name: getattr(args, name) for name in ("max_new_tokens", "block_size", "sub_block_size", "threshold")
    }


def stat_line(out: GenerationOutput) -> str:
    return (
        f"[{out.mode}] {len(out.token_ids)} tokens, {out.nfe} NFE ({out.tokens_per_nfe:.2f} tokens/NFE), "
        f"{out.tokens_per_second:.1f} tokens/s, {out.seconds:.2f} s"
    )


def quiet_loading() -> None:
    """A local model loads in moments: transformers' loading bar would only stand between the user
    and the answer (or the one error line)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def cmd_generate(args: argparse.Namespace) -> None:
    from .prompt import to_messages
    from .vlm import load

    _, images = to_messages(args.prompt, args.image)  # fail on bad input before loading the model
    quiet_loading()
    vlm = load(args.model)
    out = vlm.generate(args.prompt, images=images, mode=args.mode, **decoding_settings(args))
    if args.json:
        print(json.dumps(out.to_dict()))
    else:
        print(out.text)
        print(stat_line(out), file=sys.stderr)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo.show import run_demo

    quiet_loading()
    run_demo(args.model, args.base, seed=args.seed, repeats=args.repeats, out_dir=args.out)


def cmd_chat(args: argparse.Namespace) -> None:
    from .chat import Conversation, chat
    from .vlm import load

    conversation = Conversation(args.image)  # a bad image fails before the model loads
    quiet_loading()
    chat(load(args.model), conversation, args.mode, echo=not sys.stdin.isatty(), **decoding_settings(args))


def cmd_convert(args: argparse.Namespace) -> None:
    from .train.config import TrainConfig
    from .train.trainer import convert

    overrides = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    overrides["image_root"] = args.image_root
    config = TrainConfig.from_yaml(args.config, **overrides)
    convert(args.base, args.data, args.out, config, resume=not args.no_resume)


def cmd_bench(args: argparse.Namespace) -> None:
    from .decoding.cost import model_pass_cost
    from .eval.bench import markdown, plot, report, run_bench, write_json
    from .vlm import load

    if args.split is None:  # the demo recipe's test split, regenerated (it is deterministic)
        from .demo.recipe import DemoRecipe

        split = DemoRecipe().build_data(Path(args.workdir), splits=("test",))["test"]
    else:
        split = Path(args.split)
        if not split.is_file():
            raise FastDVLMError(f"test split not found: {split}")
    if args.batch_size < 1:
        raise FastDVLMError(f"--batch-size must be at least 1, got {args.batch_size}")
    models = {"base": load(args.base), "converted": load(args.model)}
    converted = models["converted"]
    # measured afresh: a curve cached while other work loaded the machine would skew both the
    # drafting policy and the ceiling column (seen: a 1-token pass cached at 3.3 ms, 2.2 ms alone)
    pass_cost = model_pass_cost(converted.model, converted.family, refresh=True)
    scores = run_bench(
        models, split, args.per_task, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size
    )
    result = report(scores, f"{args.model} (AR base: {args.base})", pass_cost.seconds[0])
    result["pass_cost_ms"] = {n: 1000 * t for n, t in zip(pass_cost.sizes, pass_cost.seconds, strict=True)}
    print(markdown(result))
    if args.json:
        write_json(result, args.json)
    if args.plot:
        plot(result, args.plot)


def cmd_make_demo(args: argparse.Namespace) -> None:
    from .demo.readouts import parse_repeat
    from .demo.recipe import DemoRecipe, describe_timings, make_demo

    recipe = DemoRecipe(readout_steps=args.readout_steps, ar_restart_repeat=parse_repeat(args.ar_repeat))
    paths = make_demo(args.workdir, recipe, export=not args.no_export)
    timings = json.loads((Path(args.workdir) / "recipe.json").read_text())["timings"]
    print(f"make-demo: {describe_timings(timings)}")
    exported = "" if args.no_export else " (both exported to the package's assets: demo-ar, demo)"
    print(f"AR base: {paths['ar']}, converted: {paths['converted']}{exported}")


def cmd_experiments(args: argparse.Namespace) -> None:
    from .experiments.runner import ExperimentConfig, run_experiments

    settings = {"steps": args.steps, "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
    config = ExperimentConfig.capped(args.per_task, **{k: v for k, v in settings.items() if v is not None})
    print(f"results written to {run_experiments(args.workdir, args.base, None, config, args.results)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fast-dvlm",
        description="Block-diffusion vision-language models: convert, decode fast, evaluate, serve.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate", help="answer one prompt about images", description="Answer one prompt."
    )
    gen.add_argument("--model", required=True, help=MODEL_HELP)
    gen.add_argument("--prompt", required=True, help="the question or instruction")
    gen.add_argument("--image", action="append", default=[], help="image file (repeat for several images)")
    gen.add_argument("--json", action="store_true", help="print the full result as one JSON object")
    add_decoding_args(gen)
    gen.set_defaults(run=cmd_generate)

    conv = commands.add_parser(
        "convert",
        help="fine-tune an AR VLM into a block-diffusion VLM",
        description="Convert an AR VLM with the Fast-dVLM recipe (direct conversion). Runs on one process, "
        "or many with `accelerate launch -m fast_dvlm.cli convert ...`. Resumes from the last checkpoint "
        "in --out unless --no-resume.",
    )
    conv.add_argument("--base", required=True, help="AR checkpoint directory (or tiny:FAMILY)")
    conv.add_argument("--data", required=True, help="LLaVA-style JSON or JSONL conversations")
    conv.add_argument("--out", required=True, help="output directory (checkpoints, log, final model)")
    conv.add_argument("--config", default=None, help="YAML file of training settings (see TrainConfig)")
    conv.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides the config)")
    conv.add_argument("--batch-size", type=int, default=None, help="global batch size (overrides the config)")
    conv.add_argument("--lr", type=float, default=None, help="learning rate (overrides the config)")
    conv.add_argument("--seed", type=int, default=None, help="seed for data order and noise")
    conv.add_argument(
        "--image-root", default=None, help="folder image paths are relative to (default: data's)"
    )
    conv.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    conv.set_defaults(run=cmd_convert)

    bench = commands.add_parser(
        "bench",
        help="accuracy and speed of every mode on the procedural test split",
        description="Decode the procedural test split with the AR base (transformers generate, ar) and the "
        "converted model (ar, diffusion at tau 0.9/0.7/0.5, spec-linear, spec-quadratic), all in one run. "
        "Run it alone: it measures this machine's pass-cost model afresh first (kept for later runs).",
    )
    bench.add_argument("--model", default="demo", help="converted model (default: demo)")
    bench.add_argument("--base", default="demo-ar", help="its AR base (default: demo-ar)")
    bench.add_argument(
        "--split", default=None, help="a split JSON (default: the demo's test split, regenerated)"
    )
    bench.add_argument("--workdir", default="runs/bench", help="where the regenerated split goes")
    bench.add_argument("--per-task", type=int, default=None, help="items per task (default: all)")
    bench.add_argument("--max-new-tokens", type=int, default=128)
    bench.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="items decoded together with generate_batch (default: 1, one at a time); tokens/s is then "
        "the batches' throughput",
    )
    bench.add_argument("--json", default=None, help="write the full results as JSON")
    bench.add_argument("--plot", default=None, help="write accuracy-vs-speed and tokens-per-step plots (PNG)")
    bench.set_defaults(run=cmd_bench)

    make = commands.add_parser(
        "make-demo",
        help="build the demo models from scratch (data, tokenizer, AR training, conversion)",
        description="The demo recipe (fast_dvlm.demo.recipe.DemoRecipe: a tiny FastVLM-architecture model): "
        "procedural data, offline tokenizer, vision-tower pre-training, AR training from scratch, (binding "
        "readouts, off by default), a second AR cycle, direct conversion, fp16 export to the package assets. "
        "Resumable: rerun the same command after a stop.",
    )
    make.add_argument("--workdir", default="runs/demo", help="where data, logs and checkpoints go")
    make.add_argument("--no-export", action="store_true", help="do not overwrite the shipped assets")
    make.add_argument(
        "--readout-steps",
        type=int,
        default=0,
        help="binding-readout steps between the two AR cycles (default: 0, none; the README's run: 1500)",
    )
    make.add_argument(
        "--ar-repeat",
        default="",
        help="TASK=TIMES,...: each named task's records that many times in the second AR cycle (spatial=5)",
    )
    make.set_defaults(run=cmd_make_demo)

    runs = commands.add_parser(
        "experiments",
        help="reproduce the paper's comparisons at small scale and write docs/RESULTS.md",
        description="Convert the AR base with every recipe variant of the paper's comparisons (direct, "
        "two-stage, block-causal clean stream, no annealing, no auto-truncation, vision in both streams, "
        "loss weights 0.5/1.0, direct with a second seed) on one budget; score each on the test split "
        "(and multi-turn conversations), sweep tau and block size on the direct model, and write the "
        "results page with the paper's numbers beside ours. Resumable: rerun the same command after a "
        "stop; finished pieces are skipped. The default budget fits about three hours on 2 CPU cores.",
    )
    runs.add_argument(
        "--workdir", required=True, help="where data, variants, checkpoints and JSON results go"
    )
    runs.add_argument("--base", default="demo-ar", help=f"the AR base: {MODEL_HELP} (default: demo-ar)")
    runs.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"conversion steps of every variant (default: {DEFAULT_STEPS})",
    )
    runs.add_argument(
        "--per-task",
        type=int,
        default=DEFAULT_PER_TASK,
        help=f"test items per task for each variant (default: {DEFAULT_PER_TASK}); the multi-turn set and "
        f"the sweep use at most {MULTI_TURN_PER_TASK} and {SWEEP_PER_TASK}",
    )
    runs.add_argument(
        "--batch-size", type=int, default=None, help="global batch of every variant (default: the demo's)"
    )
    runs.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer length cap when scoring (default: 128)"
    )
    runs.add_argument("--results", default="docs/RESULTS.md", help="the page to write (figures go beside it)")
    runs.set_defaults(run=cmd_experiments)

    demo = commands.add_parser(
        "demo",
        help="the demo model on fresh images, every mode side by side with its AR base",
        description="Draw fresh task images and answer them with the AR base (transformers generate, ar) and "
        "the converted demo model (spec-linear, spec-quadratic, diffusion): each image's path, the "
        "reference answer, whole answers, correctness, tokens/NFE and speed-up (medians of repeats).",
    )
    demo.add_argument("--model", default="demo", help="converted model (default: the shipped demo)")
    demo.add_argument("--base", default="demo-ar", help="its AR base (default: the shipped demo-ar)")
    demo.add_argument(
        "--seed", type=int, default=None, help="seed for the scenes (default: new ones each run)"
    )
    demo.add_argument(
        "--repeats", type=int, default=3, help="timed runs per answer after a warm-up; times are medians (3)"
    )
    demo.add_argument("--out", default=None, help="folder for the drawn images (default: a new temporary)")
    demo.set_defaults(run=cmd_demo)

    talk = commands.add_parser(
        "chat",
        help="ask your own questions about an image, turn by turn",
        description="A conversation about one image in the terminal: each answer is decoded over the "
        "turns so far. Type /image FILE to switch image, /reset to start over, /quit (or Ctrl-D) to end.",
    )
    talk.add_argument("--model", default="demo", help=f"{MODEL_HELP} (default: demo)")
    talk.add_argument("--image", required=True, help="the image to ask about")
    add_decoding_args(talk)
    talk.set_defaults(run=cmd_chat)
    add_serve_parser(commands)
    add_quantize_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "mode", None) is not None:
            check_mode(args.mode)
        args.run(args)
    except FastDVLMError as exc:
        print(f"fast-dvlm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fast-dvlm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
