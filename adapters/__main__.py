"""``python -m adapters``: publish, list, pull, verify and remove LoRA adapters in the adapter store.

The store is S3/MinIO when ``MINIO_ENDPOINT`` is set (``MINIO_*`` variables), else the local directory
``ADAPTER_STORE_DIR`` (default ./adapter_store); ``--demo`` picks the offline demo's own store, the one
``make demo`` serves. Failures exit non-zero with a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from wire.errors import AdapterInvalid, ServiceError

from .archive import extract_adapter
from .config import StoreSettings, demo_store_dir
from .factory import open_stores
from .manifest import MANIFEST_FILE, Manifest, adapter_files
from .store import AdapterStore, Progress
from .validate import inspect_adapter


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adapters",
        description="Manage LoRA adapters in the adapter store (S3/MinIO when MINIO_ENDPOINT is set, else a local "
        "directory).",
    )
    parser.add_argument("--store-dir", type=Path, help="local store directory (env ADAPTER_STORE_DIR; default "
                        "./adapter_store); ignored when MINIO_ENDPOINT is set")
    parser.add_argument("--demo", action="store_true", help="the offline demo's store, which `make demo` serves "
                        "(INFERENCE_DEMO_DIR/adapters; default ~/.cache/inference-worker/demo/adapters)")
    parser.add_argument("--bucket", help="S3 bucket (env MINIO_BUCKET, default adapters)")
    parser.add_argument("--quiet", "-q", action="store_true",
                        help="no progress bars (there are none when stderr is not a terminal)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    push = commands.add_parser("push", help="validate and publish a PEFT directory or .zip as NAME",
                               description="Validate a PEFT LoRA adapter (a directory, or a .zip such as weights.zip) "
                               "and publish it under NAME with a manifest of sizes and sha256 hashes.")
    push.add_argument("source", type=Path, metavar="SRC", help="PEFT adapter directory or .zip archive")
    push.add_argument("name", metavar="NAME", help="adapter name: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    push.add_argument("--replace", action="store_true", help="overwrite an existing adapter of that name")
    push.add_argument("--create-bucket", action="store_true", help="create the S3 bucket if it does not exist")

    ls = commands.add_parser("list", help="list the adapters in the store",
                             description="Table of name, size, rank, target modules, base model and update time.")
    ls.add_argument("--json", action="store_true", help="print the manifests as JSON")

    pull = commands.add_parser("pull", help="download NAME into DEST (verified)",
                               description="Download an adapter into a new directory DEST, every file checked "
                               "against its manifest.")
    pull.add_argument("name", metavar="NAME")
    pull.add_argument("dest", type=Path, metavar="DEST", help="directory to create (must not exist or be empty)")

    verify = commands.add_parser("verify", help="re-hash NAME against its manifest",
                                 description="Read every file of an adapter and compare size and sha256 with its "
                                 "manifest.")
    verify.add_argument("name", metavar="NAME")

    rm = commands.add_parser("rm", help="remove NAME from the store", description="Remove an adapter (manifest first,"
                             " so it stops being published at once).")
    rm.add_argument("name", metavar="NAME")
    return parser


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Progress]:
    """Progress bars on a terminal only: without one (a pipe, a log, CI) a bar cannot redraw itself and its frames
    would run into the result line, which is the one line printed there."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}
    quiet = quiet or not sys.stderr.isatty()

    def report(stage: str, done: int, total: int | None) -> None:
        if quiet:
            return
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{label} {stage}", unit="B", unit_scale=True,
                                     unit_divisor=1024, file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    try:
        yield report
    finally:
        for bar in bars.values():
            bar.close()


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KiB"


def cmd_push(store: AdapterStore, args: argparse.Namespace) -> str:
    source: Path = args.source
    if not source.exists():
        raise AdapterInvalid(f"{source} does not exist")
    with tempfile.TemporaryDirectory(prefix="adapter-push-") as tmp:
        directory = extract_adapter(source, Path(tmp)) if source.is_file() else source
        facts = inspect_adapter(directory)
        published = set(adapter_files(facts))
        skipped = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name not in published)
        if args.create_bucket and hasattr(store, "ensure_bucket"):
            store.ensure_bucket()
        with _progress(args.name, args.quiet) as report:
            manifest = store.publish(args.name, directory, replace=args.replace, progress=report)
    lines = [
        f"published {manifest.name} to {store.describe()}: digest {manifest.digest[:16]}, "
        f"{len(manifest.files)} files, {_mib(manifest.size)}, rank {manifest.rank}, "
        f"targets {','.join(manifest.target_modules)}"
    ]
    if skipped:
        lines.append(f"skipped (not part of an adapter, never published): {', '.join(skipped)}")
    return "\n".join(lines)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])


def cmd_list(store: AdapterStore, args: argparse.Namespace) -> str:
    manifests = store.list()
    if args.json:
        return json.dumps([m.model_dump(mode="json") for m in manifests], indent=2)
    if not manifests:
        return f"no adapters in {store.describe()}"
    rows = [[m.name, _mib(m.size), str(m.rank), ",".join(m.target_modules), m.base_model or "-", _when(m)]
            for m in manifests]
    return _table(rows, ["NAME", "SIZE", "RANK", "TARGET MODULES", "BASE MODEL", "UPDATED"])


def _when(m: Manifest) -> str:
    try:
        return datetime.fromisoformat(m.created).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return m.created


def cmd_pull(store: AdapterStore, args: argparse.Namespace) -> str:
    dest: Path = args.dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise AdapterInvalid(f"{dest} exists and is not an empty directory")
    with _progress(args.name, args.quiet) as report:
        fetched = store.fetch(args.name, report)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".pull-", dir=dest.parent))
        try:
            for file in [*fetched.manifest.files, MANIFEST_FILE]:
                shutil.copyfile(fetched.path / file, staging / file)
            if dest.exists():
                dest.rmdir()
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        fetched.release()
    m = fetched.manifest
    return f"pulled {m.name} (digest {m.digest[:16]}, {len(m.files)} files, {_mib(m.size)}) into {dest}"


def cmd_verify(store: AdapterStore, args: argparse.Namespace) -> str:
    with _progress(args.name, args.quiet) as report:
        m = store.verify(args.name, report)
    return f"ok: {m.name} matches its manifest (digest {m.digest[:16]}, {len(m.files)} files, {_mib(m.size)})"


def cmd_rm(store: AdapterStore, args: argparse.Namespace) -> str:
    store.remove(args.name)
    return f"removed {args.name} from {store.describe()}"


COMMANDS: dict[str, Callable[[AdapterStore, argparse.Namespace], str]] = {
    "push": cmd_push, "list": cmd_list, "pull": cmd_pull, "verify": cmd_verify, "rm": cmd_rm,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides: dict[str, Any] = {}
        if args.demo and args.store_dir is not None:
            print("error: --demo and --store-dir name two different stores: give one", file=sys.stderr)
            return 2
        if args.store_dir is not None:
            overrides["adapter_store_dir"] = args.store_dir
        if args.bucket:
            overrides["minio_bucket"] = args.bucket
        settings = StoreSettings(**overrides)
        if args.demo:  # the demo is offline: its store is a local directory whatever MINIO_* say
            from .local import LocalDirectoryStore

            store: AdapterStore = LocalDirectoryStore(demo_store_dir())
        else:
            store, _ = open_stores(settings)
        print(COMMANDS[args.command](store, args))
        return 0
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        print(f"configuration error: {'.'.join(map(str, err['loc']))}: {err['msg']}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
