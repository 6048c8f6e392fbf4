"""The `sidecar` command (docs/cli.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from sidecar import config, logs
from sidecar.config import PACKAGE_BUNDLE, ConfigError
from sidecar.policy.bundle import BundleError


def _serve(args: argparse.Namespace) -> int:
    settings = config.load(args.config)
    logs.configure(settings.log_level)
    for var, close in config.unknown_variables():
        hint = f"; did you mean {close}?" if close else ""
        logging.getLogger("sidecar").warning(f"{var} is not a setting and is ignored{hint}")
    from sidecar.app import serve

    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(settings))
    else:
        asyncio.run(serve(settings))
    return 0


def _policy_test(args: argparse.Namespace) -> int:
    from sidecar.policy import testrunner

    return testrunner.report(testrunner.run(args.dir), verbose=not args.quiet)


def _policy_eval(args: argparse.Namespace) -> int:
    from sidecar.policy import bundle as bundles
    from sidecar.policy.embedded import EmbeddedEngine

    doc = json.loads(Path(args.input).read_text())
    engine = EmbeddedEngine(bundles.load(args.bundle), args.decision_path)
    result = engine.evaluate_sync(f"data.{args.decision_path.strip('/').replace('/', '.')}", doc)
    if result is None:
        print("undefined decision (the sidecar denies it)", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _policy_build(args: argparse.Namespace) -> int:
    from sidecar.policy.build import build

    revision = build(
        args.dir,
        args.output,
        revision=args.revision,
        signing_key=args.signing_key,
        keyid=args.keyid,
        algorithm=args.signing_alg,
    )
    signed = " (signed)" if args.signing_key else ""
    print(f"wrote {args.output}: revision {revision}{signed}", file=sys.stderr)
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from sidecar.pipeline.audit import verify

    ok, message = verify(args.file)
    print(f"{args.file}: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _dev_upstream(argv: list[str]) -> int:
    from sidecar.devupstream.server import main

    return main(argv)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="sidecar", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy and its admin endpoints")
    serve.add_argument("--config", help="YAML settings file (environment variables win)")
    serve.set_defaults(func=_serve)

    policy = sub.add_parser("policy", help="test, evaluate and build policy bundles")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    ptest = psub.add_parser("test", help="run the test_* rules on the embedded engine")
    ptest.add_argument("dir", nargs="?", default=str(PACKAGE_BUNDLE))
    ptest.add_argument("-q", "--quiet", action="store_true", help="only list failures")
    ptest.set_defaults(func=_policy_test)
    peval = psub.add_parser("eval", help="print the decision document for one input")
    peval.add_argument("--input", required=True, help="JSON file holding the input document")
    peval.add_argument("--bundle", default=str(PACKAGE_BUNDLE), help="bundle directory or .tar.gz")
    peval.add_argument("--decision-path", default="sidecar/decision")
    peval.set_defaults(func=_policy_eval)
    pbuild = psub.add_parser("build", help="write an OPA bundle tarball")
    pbuild.add_argument("dir", nargs="?", default=str(PACKAGE_BUNDLE))
    pbuild.add_argument("-o", "--output", required=True)
    pbuild.add_argument("--signing-key", help="PEM private key: adds a signed .signatures.json")
    pbuild.add_argument("--signing-alg", default="RS256")
    pbuild.add_argument("--keyid", default="default", help="key id in the signature (opa's default: default)")
    pbuild.add_argument("--revision", help="set the manifest revision")
    pbuild.set_defaults(func=_policy_build)

    audit = sub.add_parser("audit", help="audit log tools")
    asub = audit.add_subparsers(dest="audit_command", required=True)
    averify = asub.add_parser("verify", help="check the hash chain; exit 1 naming the first bad line")
    averify.add_argument("file")
    averify.set_defaults(func=_audit_verify)

    from sidecar.approvals.cli import add_parser as add_approvals
    from sidecar.budget.cli import add_parser as add_budget

    add_budget(sub)
    add_approvals(sub)

    from sidecar.inject.cli import add_parser as add_inject_webhook

    add_inject_webhook(sub)

    sub.add_parser("dev-upstream", help="a local OpenAI-compatible stand-in upstream", add_help=False)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dev-upstream"]:
        return _dev_upstream(argv[1:])
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (ConfigError, BundleError, OSError, ValueError) as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
