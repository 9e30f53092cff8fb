"""torch_utils.launcher: one launching implementation for both halves (the training runs themselves, spawned
ranks included, are tested in test_training.py and tests/reconstruction/test_loop.py)."""
import functools
import pickle

import pytest

from reconstruction import launch as recon_launch
from reconstruction import loop
from torch_utils import launcher
from training import launch as gan_launch
from training import training_loop


def test_both_halves_share_the_fault_and_keep_their_public_names():
    assert training_loop.TrainingFault is loop.TrainingFault is launcher.TrainingFault
    assert training_loop.launch is gan_launch.launch and loop.launch is recon_launch.launch
    assert training_loop.TrainResult is gan_launch.TrainResult and loop.TrainResult is recon_launch.TrainResult


@pytest.mark.parametrize("status, code", [("done", 0), ("time_limit", 0), ("fault", 1), ("interrupted", 3)])
def test_results_carry_the_exit_status(status, code):
    assert gan_launch.TrainResult("run", status, 0, None).exit_status == code
    assert recon_launch.TrainResult("run", status, 0, None).exit_status == code


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="run status: expected one of"):
        gan_launch.TrainResult("run", "finished", 0, None).exit_status


@pytest.mark.parametrize("spec", [gan_launch.LAUNCHER, recon_launch.LAUNCHER], ids=["gan", "reconstruction"])
def test_spawn_entry_pickles_whole(spec):
    """A spawned rank receives the entry by pickling: the launcher must come back with the same parts."""
    entry = pickle.loads(pickle.dumps(functools.partial(launcher._spawned, spec)))
    assert entry.func is launcher._spawned and entry.args == (spec,)
    assert entry.args[0].make_trainer is spec.make_trainer and entry.args[0].options_type is spec.options_type


def test_run_folder_names():
    from reconstruction.config import resolve_options
    from training.config import TrainConfig

    config = TrainConfig()
    config = config.replace(data=config.data.replace(path="/data/ffhq256.zip"), desc="try")
    assert gan_launch.LAUNCHER.describe(config).startswith(f"{config.cfg}-ffhq256-gpus{config.num_gpus}-batch")
    assert gan_launch.LAUNCHER.describe(config).endswith("-try")
    options = resolve_options("scenes", {"data.path": "/data/scenes"})
    assert recon_launch.LAUNCHER.describe(options) == f"scenes-scenes-gpus{options.num_gpus}-batch{options.batch_gpu}"
