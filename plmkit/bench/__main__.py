"""``python -m plmkit.bench --worker SPEC.json OUT.json``: one benchmark row (started by ``plmkit bench``)."""
import sys

from .worker import worker_main

if len(sys.argv) == 4 and sys.argv[1] == "--worker":
    sys.exit(worker_main(sys.argv[2], sys.argv[3]))
sys.exit("usage: python -m plmkit.bench --worker SPEC.json OUT.json (run by plmkit bench)")
