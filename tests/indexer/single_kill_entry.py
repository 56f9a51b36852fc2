"""Subprocess entry for the kill -9 test of a single-vector recompress: one row per commit, slowly."""

import sys
import time

sys.path.insert(0, sys.argv[5])

from indexer import single_store  # noqa: E402
from indexer.store import Store  # noqa: E402


def main() -> None:
    index_dir, width, precision, delay = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    single_store.CONVERT_BATCH_PAGES = 1  # one stored row per commit: many moments to be killed at

    def progress(stage, done, total):
        print(stage.replace(" ", "_"), done, total, flush=True)
        time.sleep(delay)

    store = Store.open(index_dir, writable=True)
    result = store.recompress(single_width=width, single_precision=precision, progress=progress)
    store.close()
    print("finished", result.single_pages_converted, flush=True)


if __name__ == "__main__":
    main()
