"""``python -m smartfed.fed.supernode <flower-supernode arguments>``: a SuperNode that polls faster.

Exactly Flower 1.41's ``flower-supernode`` (same arguments, same code, same logs), run in a process
where :mod:`smartfed.fed.flower_waits` first shortens its fixed waits: it asks the SuperLink for
work every 0.25 s when idle instead of every 3 s, looks for the ClientApp's reply every 0.25 s
instead of 0.5 s, and retries an object it pulled too early after 0.1 s instead of 1 s. A round's
instructions so reach the node 1.4 s sooner on average; the price is 4 small HTTP requests per
second per idle node (docs/deployment.md, section 5). ``smartfed deploy-local`` starts its
SuperNodes this way; on a client machine it replaces ``flower-supernode`` one for one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from smartfed.log import configure_logging, get_logger

log = get_logger("smartfed.fed.supernode")


def main(argv: Sequence[str] | None = None) -> None:
    """Shorten the SuperNode's waits, then run ``flower-supernode`` with ``argv``."""
    from flwr.supernode import start_client_internal as node
    from flwr.supernode.cli import flower_supernode

    from smartfed.fed.flower_waits import cap_sleeps, quick_backoff

    configure_logging(logging.INFO)
    if not (cap_sleeps(node) and quick_backoff(node, "pull_objects")):
        log.warning("this Flower release keeps the SuperNode's own poll intervals")
    sys.argv = ["flower-supernode", *(argv if argv is not None else sys.argv[1:])]
    flower_supernode()


if __name__ == "__main__":
    main()
