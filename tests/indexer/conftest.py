import pytest

from tests.indexer.indexer_fakes import FakeEncoder
from indexer.store import Store


@pytest.fixture
def encoder():
    return FakeEncoder()


@pytest.fixture
def store(tmp_path, encoder):
    s = Store.create(tmp_path / "index", identity=encoder.identity, single_dim=encoder.single_dim,
                     multi_dim=encoder.multi_dim)
    yield s
    s.close()


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
