"""Subprocess entry for the kill -9 tests: index a folder with a slowed fake encoder."""

import sys

sys.path.insert(0, sys.argv[4])

from indexer.pipeline import index_paths  # noqa: E402
from indexer.report import FileDone  # noqa: E402
from indexer.store import Store  # noqa: E402
from tests.indexer.indexer_fakes import FakeEncoder  # noqa: E402


def main() -> None:
    index_dir, docs, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = Store.open(index_dir, writable=True)

    def on_event(event):
        if isinstance(event, FileDone):
            print("done", event.files_done, flush=True)

    report = index_paths(store, FakeEncoder(delay=delay), [docs], dpi=72, batch_size=3, on_event=on_event)
    store.close()
    print("finished", report.outcome, flush=True)


if __name__ == "__main__":
    main()
