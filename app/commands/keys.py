"""`fleetgate keys add|list|revoke FILE`: manage the gateway's keys file (see app/cli.py).

`add` prints the new key alone on its last line (scripts take it from there) and keeps only its
salted hash; `list` never prints a hash or a key. A running gateway picks the changes up by itself.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

DESCRIPTION = (
    "Manage a keys file (YAML holding salted hashes of client API keys, each with a tenant, a priority class, "
    "optional RPM/TPM limits, allowed models and an expiry). Give it to the gateway with "
    "`fleetgate serve --keys FILE`; a running gateway reloads it when it changes. Per-tenant limits go in the "
    "file's `tenants:` section (docs/gateway.md)."
)


def _expiry(text: str) -> datetime:
    """ISO 8601; a time without a zone is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r} (e.g. 2027-01-31 or "
                                         "2027-01-31T12:00:00+00:00)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _add(args: argparse.Namespace) -> int:
    from fleetgate.router.keys import KeyEntry, load_or_empty, new_key, save_keys, utc_now

    keys = load_or_empty(args.file)
    ident, key, stored = new_key({k.id for k in keys.keys})
    entry = KeyEntry(id=ident, hash=stored, tenant=args.tenant, priority=args.priority, rpm=args.rpm, tpm=args.tpm,
                     models=tuple(m for m in (args.models or "").split(",") if m), expires=args.expires,
                     created=utc_now().replace(microsecond=0))
    save_keys(args.file, keys.model_copy(update={"keys": (*keys.keys, entry)}))
    print(f"added key {ident} for tenant {args.tenant} to {args.file}; it is shown once, here:", file=sys.stderr)
    print(key)
    return 0


def _list(args: argparse.Namespace) -> int:
    from fleetgate.router.keys import load_keys, utc_now

    keys = load_keys(args.file)
    now = utc_now()
    print(f"{'ID':<12}  {'TENANT':<16}  {'PRIORITY':<8}  {'RPM':>6}  {'TPM':>8}  {'STATE':<7}  {'EXPIRES':<25}  MODELS")
    for k in keys.keys:
        state = "revoked" if k.revoked else "expired" if k.expired(now) else "active"
        print(f"{k.id:<12}  {k.tenant:<16}  {k.priority:<8}  {k.rpm or '-':>6}  {k.tpm or '-':>8}  {state:<7}  "
              f"{k.expires.isoformat() if k.expires else '-':<25}  {','.join(k.models) or '*'}")
    for tenant, limits in keys.tenants.items():
        print(f"tenant {tenant}: rpm {limits.rpm or '-'}, tpm {limits.tpm or '-'}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from fleetgate.router.keys import load_keys, save_keys

    keys = load_keys(args.file)
    if args.key_id not in keys.by_id():
        print(f"fleetgate keys revoke: no key with id {args.key_id} in {args.file}", file=sys.stderr)
        return 1
    revoked = tuple(k.model_copy(update={"revoked": True}) if k.id == args.key_id else k for k in keys.keys)
    save_keys(args.file, keys.model_copy(update={"keys": revoked}))
    print(f"revoked key {args.key_id} in {args.file}")
    return 0


def _run(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report a bad keys file (with its YAML paths) or a bad value as a message, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        from fleetgate.core.yamlconf import ConfigError

        try:
            return handler(args)
        except ConfigError as error:
            print(f"fleetgate keys: {error}", file=sys.stderr)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            print(f"fleetgate keys: {problems}", file=sys.stderr)
        return 2

    return run


def register(commands: argparse._SubParsersAction, _bench: argparse._SubParsersAction) -> None:
    """Add `fleetgate keys` and its actions to `commands`."""
    keys = commands.add_parser("keys", help="create, list and revoke client API keys (the --keys file)",
                               description=DESCRIPTION)
    keys.set_defaults(func=lambda _args: keys.print_help() or 2)
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")

    add = sub.add_parser("add", help="create a key; prints it once, alone on the last line",
                         description="Create a random key (fg-<id>-<secret>, 256 random bits), store its salted "
                         "hash in FILE (created if missing) and print the key alone on the last line. It cannot "
                         "be shown again: give it to its user now.")
    add.add_argument("file", type=Path, help="the keys YAML")
    add.add_argument("--tenant", required=True, help="the tenant the key belongs to (cache, fairness, tenant limits)")
    add.add_argument("--priority", choices=("high", "normal", "low"), default="normal",
                     help="its requests' class in the admission queue (default: normal)")
    add.add_argument("--rpm", type=int, help="requests per minute for this key (default: no limit)")
    add.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute for this key (default: no limit)")
    add.add_argument("--models", help="comma-separated models the key may use (default: every model)")
    add.add_argument("--expires", type=_expiry, help="ISO 8601 expiry, UTC unless a zone is given (default: never)")
    add.set_defaults(func=_run(_add))

    listing = sub.add_parser("list", help="show the keys (ids, tenants, limits, state; never the keys or hashes)",
                             description="One line per key: id, tenant, priority, limits, state (active, revoked, "
                             "expired), expiry and models; then the tenants' limits.")
    listing.add_argument("file", type=Path, help="the keys YAML")
    listing.set_defaults(func=_run(_list))

    revoke = sub.add_parser("revoke", help="revoke a key by its id (a running gateway refuses it on reload)",
                            description="Mark the key revoked; it stays listed. Its id is the part after fg-.")
    revoke.add_argument("file", type=Path, help="the keys YAML")
    revoke.add_argument("key_id", help="the key's id, as `keys list` shows it")
    revoke.set_defaults(func=_run(_revoke))
