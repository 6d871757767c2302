"""Put the ttsync outbox connector into a Kafka Connect worker (PUT of its config: idempotent) and wait until
its task runs. Used by deploy/local/connect.sh register; the same config is in ttsync-outbox-connector.json."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy.engine import make_url

from producer.debezium_config import connector_config


def _call(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rest", default="http://127.0.0.1:8083")
    parser.add_argument("--name", default="ttsync-outbox")
    parser.add_argument("--database-url-env", default="TTSYNC_DATABASE_URL",
                        help="environment variable holding the database URL (a URL on the command line would show "
                             "its password to every user of the machine)")
    parser.add_argument("--secrets-dir", required=True, type=Path,
                        help="where the worker can read the password file (FileConfigProvider)")
    parser.add_argument("--topic-prefix", default="timetracker")
    parser.add_argument("--slot", default=None, help="replication slot and publication (default "
                        "ttsync_outbox_<database>: one per database on a shared server)")
    parser.add_argument("--publication-exists", action="store_true",
                        help="the publication was made by `ttsync outbox cdc-role` (the role cannot make one)")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    database_url = os.environ.get(args.database_url_env)
    if not database_url:
        print(f"{args.database_url_env} is not set", file=sys.stderr)
        return 2
    # The password goes to a file only the worker's user reads; the connector config names it.
    secrets = args.secrets_dir / f"{args.name}-db.properties"
    secrets.parent.mkdir(parents=True, exist_ok=True)
    secrets.touch(mode=0o600)
    secrets.chmod(0o600)
    secrets.write_text(f"password={make_url(database_url).password or ''}\n")
    config = connector_config(database_url, args.topic_prefix, slot=args.slot, password_file=str(secrets),
                              publication_exists=args.publication_exists)
    _call("PUT", f"{args.rest}/connectors/{args.name}/config", config)
    deadline = time.monotonic() + args.timeout
    state: dict = {}
    while time.monotonic() < deadline:
        try:
            state = _call("GET", f"{args.rest}/connectors/{args.name}/status")
        except urllib.error.HTTPError:
            state = {}
        tasks = state.get("tasks") or []
        if tasks and all(t.get("state") == "RUNNING" for t in tasks) and \
                (state.get("connector") or {}).get("state") == "RUNNING":
            print(f"connector {args.name} running ({len(tasks)} task)")
            return 0
        failed = [t for t in tasks if t.get("state") == "FAILED"]
        if failed:
            print(f"connector {args.name} task failed:\n{failed[0].get('trace', '')[:3000]}", file=sys.stderr)
            return 1
        time.sleep(1)
    print(f"connector {args.name} not running after {args.timeout:.0f}s: {json.dumps(state)[:2000]}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
