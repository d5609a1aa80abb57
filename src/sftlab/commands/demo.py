"""`sftlab demo`: the end-to-end demonstration that `make demo` runs (see sftlab.demo)."""


def register(registry) -> None:
    parser = registry.top.add_parser("demo", help="fine-tune the embedded default end to end, evaluate, report, push",
                                     description="Fine-tune the embedded default model on bundled data with a "
                                                 "partial-parameter strategy, evaluate on held-out data, write a report; "
                                                 "then run the policy-push application.")
    parser.add_argument("--out", default="runs/demo", help="output directory (replaced)")
    parser.add_argument("--model", default="gemma-3-270m", help="model directory or embedded default name")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    parser.add_argument("--no-policy", action="store_true", help="skip the policy-push application")
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from sftlab.demo import run_demo

    run_demo(args.out, args.model, steps=args.steps, policy=not args.no_policy)
    return 0
