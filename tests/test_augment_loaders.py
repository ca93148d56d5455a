"""Epoch order, DDP sharding, seeding, the eval loader and the policy registry (pipeline.augment)."""
import numpy as np
import pytest
import torch

from pipeline.augment import POLICIES, build_eval_loader, build_train_loader
from pipeline.augment.loaders import EpochPlan, TrainLoader, derive_seed
from pipeline.errors import PipelineError


def tiny(n=40, size=8, chans=3, seed=0):
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, chans), dtype=np.uint8)
    return images, np.arange(n, dtype=np.int64)


def test_registry_holds_the_eight_policies_and_rejects_unknown_names():
    assert POLICIES.names() == sorted(["none", "standard", "standard+cutout", "standard+cutout-inside", "lab",
                                       "lab-albu", "autoaugment", "randaugment"])
    images, labels = tiny()
    with pytest.raises(PipelineError, match="unknown augmentation policy 'mixup'.*standard"):
        build_train_loader(images, labels, policy="mixup")


def test_cutout_size_with_a_policy_that_does_not_use_it_is_an_error():
    images, labels = tiny()
    with pytest.raises(PipelineError, match="cutout=8 is only used by policies standard\\+cutout, standard\\+cutout-inside"):
        build_train_loader(images, labels, policy="standard", cutout=8)


@pytest.mark.parametrize("bad", [np.zeros((4, 8, 8, 3), np.float32), np.zeros((4, 8, 8), np.uint8)])
def test_images_that_are_not_uint8_nhwc_are_a_pipeline_error(bad):
    with pytest.raises(PipelineError, match="expected uint8 NHWC"):
        build_train_loader(bad, np.arange(4), batch_size=2)


def test_labels_of_another_length_are_a_pipeline_error():
    images, _ = tiny(8)
    with pytest.raises(PipelineError, match=r"train labels: expected shape \(8,\)"):
        build_train_loader(images, np.arange(7), batch_size=2)


def test_no_full_batch_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="make no full batch of 64"):
        EpochPlan(num_items=100, batch_size=64, world_size=2)


def test_rank_outside_world_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="rank 2 is not in a world of size 2"):
        EpochPlan(num_items=100, batch_size=4, rank=2, world_size=2)


def test_derive_seed_is_stable_and_separates_nearby_keys():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    seeds = {derive_seed(s, e) for s in range(3) for e in range(3)}
    assert len(seeds) == 9
    assert derive_seed(1, 0) != derive_seed(0, 1)
    assert all(0 <= s < 2**63 for s in seeds)


def test_one_rank_sees_every_sample_once_keeping_the_partial_batch():
    plan = EpochPlan(num_items=10, batch_size=4, drop_last=False)
    assert len(plan) == 3 and plan.num_samples == 10
    assert sorted(plan.indices(0).tolist()) == list(range(10))


def test_drop_last_drops_only_the_partial_batch():
    plan = EpochPlan(num_items=10, batch_size=4, drop_last=True)
    assert len(plan) == 2 and plan.num_samples == 8
    order = plan.indices(3).tolist()
    assert len(order) == len(set(order)) == 8


def test_two_ranks_share_one_permutation_and_split_it_exactly():
    ranks = [EpochPlan(num_items=24, batch_size=4, seed=5, rank=r, world_size=2) for r in range(2)]
    assert [len(p) for p in ranks] == [3, 3]
    seen = torch.cat([p.indices(2) for p in ranks]).tolist()
    assert sorted(seen) == list(range(24))


def test_odd_count_over_two_ranks_pads_with_one_repeat_or_drops_one():
    padded = [EpochPlan(num_items=9, batch_size=2, rank=r, world_size=2, drop_last=False) for r in range(2)]
    seen = torch.cat([p.indices(0) for p in padded]).tolist()
    assert [p.num_samples for p in padded] == [5, 5] and [len(p) for p in padded] == [3, 3]
    assert set(seen) == set(range(9)) and len(seen) == 10
    dropped = [EpochPlan(num_items=9, batch_size=2, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([p.indices(0) for p in dropped]).tolist()
    assert [len(p) for p in dropped] == [2, 2] and len(set(seen)) == 8


def test_order_depends_on_seed_and_epoch_only():
    plan = EpochPlan(num_items=50, batch_size=5, seed=1)
    assert torch.equal(plan.indices(4), EpochPlan(num_items=50, batch_size=5, seed=1).indices(4))
    assert not torch.equal(plan.indices(4), plan.indices(5))
    assert not torch.equal(plan.indices(4), EpochPlan(num_items=50, batch_size=5, seed=2).indices(4))


@pytest.mark.parametrize("policy", ["none", "standard", "standard+cutout", "lab", "lab-albu", "autoaugment"])
def test_train_loaders_yield_uint8_nchw_and_each_label_once(policy):
    images, labels = tiny(n=20, chans=3)
    loader = build_train_loader(images, labels, policy=policy, batch_size=8, drop_last=False, workers=0)
    assert isinstance(loader, TrainLoader)
    loader.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(loader) == 3 and loader.num_samples == 20
    for x, y in batches:
        assert x.dtype == torch.uint8 and x.device.type == "cpu" and x.is_contiguous()
        assert x.shape[1:] == (3, 8, 8) and x.shape[0] == y.shape[0]
        assert y.dtype == torch.int64
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(20))


def test_eval_loader_keeps_order_and_converts_to_nchw():
    images, labels = tiny(n=11)
    loader = build_eval_loader(images, labels, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [x.shape[0] for x, _ in batches] == [4, 4, 3]
    x = torch.cat([x for x, _ in batches])
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.cat([y for _, y in batches]).tolist() == list(range(11))
    assert all(x.is_contiguous() for x, _ in batches)


def test_eval_loader_without_labels_yields_none():
    images, _ = tiny(n=5)
    assert [y for _, y in build_eval_loader(images, None, batch_size=2)] == [None, None, None]


def test_eval_shards_are_contiguous_and_their_indices_restore_the_order():
    images, labels = tiny(n=11)
    shards = [build_eval_loader(images, labels, batch_size=4, rank=r, world_size=2) for r in range(2)]
    assert [s.num_samples for s in shards] == [6, 5]
    assert np.concatenate([s.indices for s in shards]).tolist() == list(range(11))
    for shard in shards:
        assert torch.cat([y for _, y in shard]).tolist() == shard.indices.tolist()
