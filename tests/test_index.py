"""On-disk assets: round trip, and a clear one-line FlashHeadError for every kind of bad file."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashhead import ClusterIndex, FlashHeadConfig, FlashHeadError, balanced_kmeans
from flashhead.core.index import JSON_FILE, TENSORS_FILE, fingerprint


@pytest.fixture(scope="module")
def weight():
    return torch.randn(1024, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def assets(tmp_path, weight):
    c = balanced_kmeans(weight, 16, iterations=1, progress=False)
    ClusterIndex(FlashHeadConfig(probes=8), c.assignments, c.centroids, fingerprint(weight)).save(tmp_path)
    return tmp_path / "flash_head_assets"


def _edit_tensors(assets, **changes):
    t = load_file(str(assets / TENSORS_FILE))
    t.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del t[k]
    save_file(t, str(assets / TENSORS_FILE))


def test_round_trip(assets, weight):
    index = ClusterIndex.load(assets)
    assert index.vocab == 1024 and index.num_clusters == 64 and index.config.probes == 8
    ids, mask = index.blocks()
    assert mask.all() and torch.equal(torch.sort(ids.flatten()).values, torch.arange(1024))
    offsets = torch.randn(1024)
    index.offsets = offsets
    index.save(assets.parent)
    assert torch.equal(ClusterIndex.load(assets).offsets, offsets)


def test_assets_without_offsets_load_with_zero_offsets(assets):
    _edit_tensors(assets, token_offsets=None)     # as written before offsets existed, or published
    assert torch.equal(ClusterIndex.load(assets).offsets, torch.zeros(1024))


@pytest.mark.parametrize("bad,match", [(torch.zeros(1000), r"token_offsets must have shape \[1024\]"),
                                       (torch.full((1024,), float("nan")), "token_offsets contain NaN")])
def test_bad_offsets(assets, bad, match):
    _edit_tensors(assets, token_offsets=bad)
    with pytest.raises(FlashHeadError, match=match):
        ClusterIndex.load(assets)


def test_next_clusters_round_trip_and_bad_ones(assets):
    index = ClusterIndex.load(assets)
    assert index.successors is None                 # builds without them load as before
    nxt = torch.randint(0, 64, (1024, 5))
    index.successors = nxt
    index.save(assets.parent)
    assert torch.equal(ClusterIndex.load(assets).successors, nxt)
    assert load_file(str(assets / TENSORS_FILE))["next_clusters"].dtype == torch.int32
    for bad in (torch.randint(0, 64, (1000, 5)), torch.full((1024, 5), 64), torch.zeros(1024, 0)):
        _edit_tensors(assets, next_clusters=bad.to(torch.int32))
        with pytest.raises(FlashHeadError, match=r"next_clusters must be \[1024, m\] cluster ids in \[0, 64\)"):
            ClusterIndex.load(assets)


def test_published_layout_with_leading_singleton_dims(assets):
    t = load_file(str(assets / TENSORS_FILE))
    _edit_tensors(assets, centroids=t["centroids"].unsqueeze(0))   # [1, d, K]
    assert ClusterIndex.load(assets).centroids.shape == (64, 32)


def test_truncated_file(assets):
    data = (assets / TENSORS_FILE).read_bytes()
    (assets / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(FlashHeadError, match="unreadable safetensors"):
        ClusterIndex.load(assets)


def test_missing_file_and_missing_key(assets):
    _edit_tensors(assets, cluster_assignments=None)
    with pytest.raises(FlashHeadError, match="missing tensor 'cluster_assignments'"):
        ClusterIndex.load(assets)
    (assets / TENSORS_FILE).unlink()
    with pytest.raises(FlashHeadError, match="missing FlashHead asset file"):
        ClusterIndex.load(assets)


def test_bad_json(assets):
    (assets / JSON_FILE).write_text("{not json")
    with pytest.raises(FlashHeadError, match="not valid JSON"):
        ClusterIndex.load(assets)


def test_wrong_vocab(assets):
    t = load_file(str(assets / TENSORS_FILE))
    _edit_tensors(assets, cluster_assignments=t["cluster_assignments"][:-16])
    with pytest.raises(FlashHeadError, match="vocabulary is 1024"):
        ClusterIndex.load(assets)


def test_unequal_clusters(assets):
    t = load_file(str(assets / TENSORS_FILE))
    a = t["cluster_assignments"].clone()
    a[a == 3] = 4
    _edit_tensors(assets, cluster_assignments=a)
    with pytest.raises(FlashHeadError, match="not of equal size"):
        ClusterIndex.load(assets)


def test_nan_centroids(assets):
    t = load_file(str(assets / TENSORS_FILE))
    c = t["centroids"].clone()
    c[0, 5] = float("nan")
    _edit_tensors(assets, centroids=c)
    with pytest.raises(FlashHeadError, match="NaN"):
        ClusterIndex.load(assets)


def test_unknown_config_key(assets):
    meta = json.loads((assets / JSON_FILE).read_text())
    meta["config"]["probez"] = 3
    (assets / JSON_FILE).write_text(json.dumps(meta))
    with pytest.raises(FlashHeadError, match="unknown FlashHead config keys: probez"):
        ClusterIndex.load(assets)


def test_assets_of_another_model_on_a_real_model(smollm2_flashhead_dir, smollm2_hf_dir, smollm2_head, tmp_path):
    """Same shape, different weights (as for a fine-tune): the fingerprint refuses the assets."""
    from flashhead.integrations import hf

    d = tmp_path / "m"
    shutil.copytree(smollm2_flashhead_dir, d, copy_function=shutil.copy)
    index = ClusterIndex.load(d / "flash_head_assets")
    other = smollm2_head + 0.1 * smollm2_head.std() * torch.randn_like(smollm2_head)
    ClusterIndex(index.config, index.assignments, index.centroids, fingerprint(other)).save(d)
    with pytest.raises(FlashHeadError, match="fingerprint mismatch"):
        hf.load(d)
    with pytest.raises(FlashHeadError, match="not a FlashHead model directory"):
        hf.load(smollm2_hf_dir)  # the plain model: FlashHead asked for, no assets
