"""Create the ACLs of ttsync's relay and consumer principals (schemas.kafka_client.principal_acls).

Run by ``kafka.sh start`` with KAFKA_SECURITY=sasl_ssl, as the admin user (TTSYNC_KAFKA_* in the environment).
Creating an ACL that exists is a no-op, so a restart may run it again. Prints how many each principal got.
"""

from __future__ import annotations

import argparse
import sys

from _repo import kafka_connection_from_env
from kafka import KafkaAdminClient
from kafka.admin import ACL, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType

from schemas.kafka_client import principal_acls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--relay", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--prefix", default="timetracker")
    parser.add_argument("--group", default="ttsync-qbo")
    parser.add_argument("--retry-delays", default="10,60,300")
    args = parser.parse_args()
    grants = principal_acls(relay=args.relay, consumer=args.consumer, prefix=args.prefix, group=args.group,
                            retry_delays_s=[int(d) for d in args.retry_delays.split(",") if d])
    acls = [ACL(principal=g.principal, host="*", operation=getattr(ACLOperation, g.operation),
                permission_type=ACLPermissionType.ALLOW,
                resource_pattern=ResourcePattern(getattr(ResourceType, g.resource_type), g.name,
                                                 getattr(ACLResourcePatternType, g.pattern)))
            for g in grants]
    admin = KafkaAdminClient(**kafka_connection_from_env().client_config(), client_id="ttsync-acls")
    try:
        result = admin.create_acls(acls)
    finally:
        admin.close()
    failed = result.get("failed", [])
    for principal in sorted({g.principal for g in grants}):
        print(f"[kafka_acls] {principal}: {sum(g.principal == principal for g in grants)} ACLs")
    for acl, error in failed:
        print(f"[kafka_acls] FAILED {acl}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
