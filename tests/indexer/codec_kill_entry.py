"""Subprocess entry for the kill -9 test of recompress: convert an index slowly, one page per commit."""

import sys
import time

sys.path.insert(0, sys.argv[4])

from indexer import codec_store  # noqa: E402
from indexer.store import Store  # noqa: E402


def main() -> None:
    index_dir, compression, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    codec_store.CONVERT_BATCH_PAGES = 1  # one page per commit: many moments to be killed at

    def progress(stage, done, total):
        print(stage, done, total, flush=True)
        time.sleep(delay)

    store = Store.open(index_dir, writable=True)
    result = store.recompress(compression, progress=progress)
    store.close()
    print("finished", result.pages_converted, flush=True)


if __name__ == "__main__":
    main()
